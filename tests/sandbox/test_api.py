"""The sandbox's Python API, CLI and code rewards on well-behaved programs."""

from __future__ import annotations

import json

import pytest

from reasonloop.rewards.code import CodeVerifier, compiles_reward, efficiency_reward, pass_rate_reward
from reasonloop.sandbox import NAMESPACES, IsolationError, Limits, Sandbox, isolation_level
from reasonloop.sandbox import cli, isolation

pytestmark = pytest.mark.skipif(isolation_level() != NAMESPACES, reason="needs bubblewrap namespaces")


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Limits(wall_time_s=2.0, cpu_time_s=1, max_output_bytes=1 << 14))


def test_run_reads_stdin_and_result_is_json(sandbox):
    result = sandbox.run("print(input()[::-1])", stdin="abc\n")
    assert (result.status, result.stdout, result.exit_code) == ("ok", "cba\n", 0)
    assert json.loads(result.to_json())["isolation"] == NAMESPACES


def test_c_programs_compile_and_run(sandbox):
    ok = sandbox.run('#include <stdio.h>\nint main(){int a;scanf("%d",&a);printf("%d\\n",2*a);}', "21", "c")
    assert (ok.status, ok.stdout) == ("ok", "42\n")
    assert sandbox.run("int main( {", language="c").status == "compile_error"


def test_refuses_without_namespaces_unless_opted_in(monkeypatch):
    weak = isolation.Isolation(isolation.RLIMITS, None, "/usr/bin/prlimit", "/usr/bin/setpriv", True, "test")
    monkeypatch.setattr("reasonloop.sandbox.runner.detect", lambda uid_base: weak)
    with pytest.raises(IsolationError, match="allow_unisolated"):
        Sandbox()
    result = Sandbox(Limits(wall_time_s=2), allow_unisolated=True).run("import os; print(os.environ['HOME'])")
    assert result.status == "ok" and result.isolation == "rlimits" and "reasonloop-sbx-" in result.stdout
    monkeypatch.setenv("REASONLOOP_ALLOW_UNISOLATED", "1")  # the opt-in where callers build the sandbox
    assert Sandbox().run("print(1)").isolation == "rlimits"


def test_cli_prints_json_result(tmp_path, capsys):
    (tmp_path / "p.py").write_text("print(int(input()) + 1)")
    (tmp_path / "in.txt").write_text("41\n")
    code = cli.main(["run", str(tmp_path / "p.py"), "--stdin", str(tmp_path / "in.txt"), "--timeout", "2"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "ok" and out["stdout"] == "42\n"


def test_rewards_io_style_compile_and_efficiency(sandbox):
    verifier = CodeVerifier(sandbox, workers=2)
    io = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]
    good, half = "a, b = map(int, input().split())\nprint(a + b)", "print(3)"
    rates = pass_rate_reward(verifier)(["", "", ""], [good, half, "x"], tests=[io, io, None],
                                       test_style=["io", "io", None])
    assert rates == [1.0, 0.5, None]
    assert compiles_reward(verifier)(["", ""], [good, "def f(:"]) == [1.0, 0.0]
    eff = efficiency_reward(verifier)(["", ""], [good, half], tests=[io, io], test_style=["io", "io"])
    assert 0.5 < eff[0] <= 1.0 and eff[1] == 0.0


def test_identical_rows_of_a_batch_run_once(sandbox):
    verifier = CodeVerifier(sandbox, workers=2)
    submitted = []
    run_many = verifier.pool.run_many
    verifier.pool.run_many = lambda jobs: submitted.extend(jobs) or run_many(jobs)
    good, bad = "def f(x):\n    return x + 1", "def f(x):\n    return x"
    tests = ["assert f(1) == 2", "assert f(5) == 6"]
    outcomes = verifier.check_many([(good, tests, "assert", ""), (bad, tests, "assert", ""),
                                    (good, tests, "assert", ""), (good, tests, "assert", "")])
    assert [o.passed for o in outcomes] == [2, 0, 2, 2]
    assert len(submitted) == 2  # one job per distinct program (assert-style: one run per program)
