"""The input corpus (issue 13): malformed, hostile and odd input across every command and file type.

Every case states its exact outcome: an exit code and a message substring, or the documented
behaviour of an odd-but-valid input. Every failing case runs in a scratch working directory whose
files are checked byte for byte afterwards (and, for failures caught before any work, that nothing
was created). Cases run in-process through `reasonloop.cli.main`; one interrupt uses a subprocess.
docs/reliability.md has the policy and the table of classes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from inputs_corpus import CASES, FILES  # noqa: E402

from reasonloop.cli import main  # noqa: E402
from reasonloop.config import ConfigError, load_config  # noqa: E402
from reasonloop.errors import UserError, current_run_dir, note_run_dir  # noqa: E402


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file ('dir' for every directory) under `root`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    root = tmp_path / "wd"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    monkeypatch.chdir(root)
    monkeypatch.delenv("REASONLOOP_DEBUG", raising=False)
    return root


def assert_untouched(root: Path, before: dict[str, str], strict: bool) -> None:
    after = snapshot(root)
    if strict:
        assert after == before, f"the working directory changed: {set(after.items()) ^ set(before.items())}"
    else:
        changed = {k for k, v in before.items() if after.get(k) != v}
        assert not changed, f"pre-existing files changed: {changed}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_line_and_touches_nothing(case, workdir, nano_model_dir, capsys):
    if case.setup is not None:
        case.setup(workdir, nano_model_dir)
    before = snapshot(workdir)
    rc = main([a.replace("{nano}", nano_model_dir) for a in case.argv])
    out, err = capsys.readouterr()
    assert rc == case.rc, f"exit {rc}, stderr: {err[-2000:]}"
    assert case.message in (err if rc else out), err[-2000:]
    if "--debug" not in case.argv:
        assert "Traceback" not in err
        assert len([ln for ln in err.splitlines() if ln.startswith("reasonloop")]) == 1
    assert_untouched(workdir, before, strict=not case.writes)


def test_the_corpus_is_large_enough_and_ids_are_unique():
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)


# -- odd but valid: string values keep their text ------------------------------------------------------

def _eval_cfg(*args):
    from reasonloop.recipes.evaluate import Config

    return load_config(Config, list(args))


STRING_VALUES = ["0042", "off", "12:30", "yes", "no", "null", "~", "1e3", "0x1F", "true", "3.0", "[a]x", "-"]


@pytest.mark.parametrize("text", STRING_VALUES)
def test_a_string_key_takes_the_text_as_written_on_the_command_line(text):
    assert _eval_cfg(f"output_dir={text}").output_dir == text


@pytest.mark.parametrize("text", ["0042", "off", "12:30", "yes", "1e3"])
def test_a_string_key_takes_the_text_as_written_in_yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(f"output_dir: {text}\ntask: {text}\nmodel:\n  name: {text}\n")
    cfg = _eval_cfg(str(path))
    assert (cfg.output_dir, cfg.task, cfg.model.name) == (text, text, text)


def test_quoted_yaml_strings_and_non_string_keys_keep_yaml_meaning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: '0042'\nn: 0x10\ngreedy: off\nsampling:\n  temperature: 5e-1\n")
    cfg = _eval_cfg(str(path))
    assert (cfg.output_dir, cfg.n, cfg.greedy, cfg.sampling.temperature) == ("0042", 16, False, 0.5)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "\n\n"])
def test_an_empty_yaml_file_means_the_defaults(tmp_path, text):
    path = tmp_path / "c.yml"
    path.write_text(text)
    assert _eval_cfg(str(path)) == _eval_cfg()


def test_an_empty_yaml_value_for_a_string_key_is_the_empty_string(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir:\n")
    assert _eval_cfg(str(path)).output_dir == ""


def test_a_tab_inside_a_yaml_value_is_fine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('output_dir: "a\tb"\n')
    assert _eval_cfg(str(path)).output_dir == "a\tb"


def test_output_dir_0042_writes_to_0042_not_34(workdir, nano_model_dir, capsys):
    before = snapshot(workdir)
    assert main(["eval", f"model.name={nano_model_dir}", "n=1", "k=0", "threads=1", "output_dir=0042"]) == 0
    assert (workdir / "0042" / "summary.json").is_file() and not (workdir / "34").exists()
    assert_untouched(workdir, before, strict=False)


# -- data files: streamed, bounded, counted --------------------------------------------------------------

def test_a_5mb_line_is_skipped_without_being_held_in_memory(tmp_path, caplog):
    from reasonloop.data.io import read_jsonl

    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.write('{"prompt": "a", "completion": "b"}\n')
        f.write('{"prompt": "' + "x" * (5 * 1024 * 1024) + '", "completion": "b"}\n')
        f.write('{"prompt": "c", "completion": "d"}\n')
    tracemalloc.start()
    with caplog.at_level(logging.WARNING):
        rows = read_jsonl(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r["prompt"] for r in rows] == ["a", "c"]
    assert peak < 3 * 1024 * 1024, peak  # at most ~2 MiB of the line is ever in memory
    assert "skipped 1 of 3 lines: 1 over 1048576 bytes (first at line 2)" in caplog.text


def test_bad_lines_are_counted_by_kind_with_their_first_line(tmp_path, caplog):
    from reasonloop.data.io import read_jsonl

    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\n{broken\n\n[1]\n{"a": 2}\n\xff\xfe\n{"a": 3}\n{broken')
    with caplog.at_level(logging.WARNING):
        rows = read_jsonl(path)
    assert [r["a"] for r in rows] == [1, 2, 3]
    assert ("skipped 4 of 7 lines: 2 malformed JSON (first at line 2), 1 not a JSON object (first at line 4), "
            "1 not UTF-8 (first at line 6)") in caplog.text


def test_bom_crlf_and_blank_lines_are_read(tmp_path):
    from reasonloop.data.io import read_jsonl

    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": "x"}\r\n\r\n{"a": "y"}\r\n')
    assert read_jsonl(path) == [{"a": "x"}, {"a": "y"}]


def test_a_json_array_file_is_read_and_rows_of_mixed_types_are_kept(tmp_path):
    from reasonloop.data.io import load_rows

    path = tmp_path / "rows.json"
    path.write_text('[{"prompt": "p", "answer": 1}, {"prompt": "q", "answer": "two"}, 7]')
    assert load_rows(str(path)) == [{"prompt": "p", "answer": 1}, {"prompt": "q", "answer": "two"}]


def test_a_record_limit_can_be_set_per_call(tmp_path):
    from reasonloop.data.io import DataError, read_jsonl

    path = tmp_path / "r.jsonl"
    path.write_text('{"a": "0123456789"}\n')
    with pytest.raises(DataError, match=r"no usable records \(1 over 8 bytes \(first at line 1\)\)"):
        read_jsonl(path, max_record_bytes=8)


def test_code_tasks_and_table_tasks_read_through_the_one_loader(tmp_path, monkeypatch):
    import reasonloop.data.io as io
    from reasonloop.tasks import make_task

    calls = []
    real = io.read_jsonl
    monkeypatch.setattr(io, "read_jsonl", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    import reasonloop.tasks.code as code

    monkeypatch.setattr(code, "read_jsonl", io.read_jsonl)
    (tmp_path / "t.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n' * 2)
    make_task("jsonl", str(tmp_path / "t.jsonl")).split_examples("train")
    (tmp_path / "m.jsonl").write_text('{"task_id": 11, "text": "t", "test_list": ["assert f()==1"], "code": "x"}\n')
    assert len(make_task("mbpp", str(tmp_path / "m.jsonl")).examples("test", 5)) == 1
    assert [Path(p).name for p in calls] == ["t.jsonl", "m.jsonl"]


# -- bounds: prompts and completions ------------------------------------------------------------------

def test_sft_max_len_bounds_prompt_plus_completion_by_cutting_the_prompt_from_the_left(tokenizer):
    from reasonloop.models.forward import encode_pairs

    batch = encode_pairs(tokenizer, ["abcdefghij", "xy"], ["12", "34"], max_len=6)
    lengths = (batch.prompt_mask.sum(-1) + batch.completion_mask.sum(-1)).tolist()
    assert lengths == [6, 5]  # 'fghij' + '1' (room for one completion token); 'xy' + '34<eos>'
    assert tokenizer.decode(batch.prompt_ids[0][batch.prompt_mask[0].bool()]) == "fghij"
    assert tokenizer.decode(batch.completion_ids[0][batch.completion_mask[0].bool()]) == "1"


def test_prompts_longer_than_context_minus_max_new_tokens_are_dropped_and_counted(tokenizer, caplog):
    from reasonloop.data.records import Example
    from reasonloop.models.loading import ModelError, drop_long_prompts

    class Model:
        config = type("C", (), {"max_position_embeddings": 20})()

    exs = [Example("a" * 10, "1", {}), Example("b" * 11, "1", {}), Example("c" * 30, "1", {})]
    with caplog.at_level(logging.WARNING):
        kept = drop_long_prompts(exs, tokenizer, lambda p: p, Model(), 10, "toy/train")
    assert [e.prompt[0] for e in kept] == ["a"]
    assert "toy/train: dropped 2 of 3 prompts longer than 10 tokens (context 20 - max_new_tokens 10)" in caplog.text
    with pytest.raises(ModelError, match="every prompt is longer than 10 tokens"):
        drop_long_prompts(exs[1:], tokenizer, lambda p: p, Model(), 10, "toy/train")
    with pytest.raises(ModelError, match="max_new_tokens=20 leaves no room"):
        drop_long_prompts(exs, tokenizer, lambda p: p, Model(), 20, "toy/train")


def test_eval_with_max_new_tokens_filling_the_context_is_a_clear_error(workdir, nano_model_dir, capsys):
    before = snapshot(workdir)
    rc = main(["eval", f"model.name={nano_model_dir}", "n=1", "k=0", "sampling.max_new_tokens=256", "threads=1",
               "output_dir=out"])
    assert rc == 2 and "max_new_tokens=256 leaves no room for a prompt" in capsys.readouterr().err
    assert_untouched(workdir, before, strict=True)


# -- reward functions -----------------------------------------------------------------------------------

def _ex():
    from reasonloop.data.records import Example

    return Example("Q", "1", {"level": 1})


def test_a_reward_that_raises_on_the_whole_first_batch_stops_with_its_name_and_error():
    from reasonloop.rewards.core import RewardError, RewardSpec, compute_rewards

    def boom(prompts, completions, **_):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(RewardError, match=r"reward function 'boom' failed on every row of the first batch "
                                          r"\(first failure: ZeroDivisionError: division by zero\)"):
        compute_rewards([RewardSpec("boom", boom)], ["a", "b"], [_ex(), _ex()])


@pytest.mark.parametrize("fn, first", [
    (lambda prompts, completions, **_: [math.nan] * len(completions), "returned nan"),
    (lambda prompts, completions, **_: [math.inf] * len(completions), "returned inf"),
    (lambda prompts, completions, **_: ["x"] * len(completions), "returned 'x'"),
    (lambda prompts, completions, **_: [1.0], "returned 1 values for 2 rows"),
    (lambda prompts, completions, **_: 3.0, "TypeError"),
])
def test_a_reward_that_returns_nothing_usable_on_the_first_batch_stops(fn, first):
    from reasonloop.rewards.core import RewardError, RewardSpec, compute_rewards

    with pytest.raises(RewardError, match=f"first failure: {first}"):
        compute_rewards([RewardSpec("bad", fn)], ["a", "b"], [_ex(), _ex()])


def test_a_reward_failing_later_stops_after_three_whole_batches_in_a_row():
    from reasonloop.rewards.core import FAILED_BATCHES_LIMIT, RewardError, RewardSpec, compute_rewards

    plan = iter([True, False, False, True, False, False, False])  # ok, fail, fail, ok, fail, fail, fail

    def flaky(prompts, completions, **_):
        if next(plan):
            return [1.0] * len(completions)
        raise RuntimeError("backend down")

    spec = RewardSpec("flaky", flaky)
    for _ in range(6):  # the success in the middle resets the count
        result = compute_rewards([spec], ["a"], [_ex()])
    assert FAILED_BATCHES_LIMIT == 3 and result.errors == {"flaky": 1}
    with pytest.raises(RewardError, match=r"'flaky' failed on every row of 3 batches in a row \(first failure: "
                                          r"RuntimeError: backend down\)"):
        compute_rewards([spec], ["a"], [_ex()])


def test_partial_failures_and_none_values_are_counted_not_fatal():
    from reasonloop.rewards.core import RewardSpec, compute_rewards

    half = RewardSpec("half", lambda prompts, completions, **_: [math.nan, 1.0])
    na = RewardSpec("na", lambda prompts, completions, **_: [None, None])
    for _ in range(5):
        result = compute_rewards([half, na], ["a", "b"], [_ex(), _ex()])
    assert result.errors == {"half": 1} and result.total.tolist() == [0.0, 1.0]


def test_train_with_a_reward_that_always_raises_exits_2_naming_it(workdir, nano_model_dir, capsys):
    (workdir / "badreward_h1.py").write_text("def boom(prompts, completions, **kw):\n    raise KeyError('level')\n")
    before = snapshot(workdir)
    rc = main(["train", f"model.name={nano_model_dir}", "task=arithmetic:1", "train_pool=4", "eval_n=1", "eval_k=0",
               "steps=2", "prompts_per_step=2", "group_size=2", "sampling.max_new_tokens=4", "save_every=0",
               "reward_funcs=[badreward_h1:boom]", "threads=1", "output_dir=out"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "reward function 'boom' failed on every row of the first batch (first failure: KeyError: 'level')" in err
    assert "Traceback" not in err
    assert_untouched(workdir, before, strict=False)


# -- interrupts, internal errors, the filesystem -----------------------------------------------------------

def test_ctrl_c_after_the_run_directory_exists_says_where_to_resume(workdir, monkeypatch, capsys):
    import reasonloop.recipes.evaluate as ev

    def interrupted(cfg):
        note_run_dir(workdir / "out")
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "run", interrupted)
    assert main(["eval", "threads=1", "output_dir=out"]) == 130
    err = capsys.readouterr().err
    assert f"reasonloop eval: interrupted; resume with the same command and output_dir={workdir / 'out'}" in err
    assert "Traceback" not in err


def test_ctrl_c_before_any_run_directory_says_nothing_was_written(workdir, monkeypatch, capsys):
    import reasonloop.recipes.evaluate as ev

    note_run_dir(workdir / "stale")  # a previous command's run in this process is forgotten
    monkeypatch.setattr(ev, "run", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt()))
    before = snapshot(workdir)
    assert main(["eval", "threads=1", "output_dir=out"]) == 130
    assert "interrupted; no run directory was written" in capsys.readouterr().err
    assert current_run_dir() is None
    assert_untouched(workdir, before, strict=True)


def test_an_internal_error_is_one_line_with_a_debug_hint(workdir, monkeypatch, capsys):
    import reasonloop.recipes.evaluate as ev

    monkeypatch.setattr(ev, "run", lambda cfg: [][1])
    assert main(["eval", "threads=1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("reasonloop eval: internal error: IndexError: list index out of range; run again with "
                           "--debug (or REASONLOOP_DEBUG=1) for the traceback, and report it")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(workdir, monkeypatch, capsys, how):
    import reasonloop.recipes.evaluate as ev

    monkeypatch.setattr(ev, "run", lambda cfg: [][1])
    argv = ["eval", "threads=1"] + (["--debug"] if how == "flag" else [])
    if how == "env":
        monkeypatch.setenv("REASONLOOP_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "IndexError: list index out of range" in err


def test_out_of_memory_is_an_internal_error_with_advice(workdir, monkeypatch, capsys):
    import reasonloop.recipes.evaluate as ev

    def oom(cfg):
        raise MemoryError()

    monkeypatch.setattr(ev, "run", oom)
    assert main(["eval", "threads=1"]) == 1
    assert "out of memory; lower batch sizes, max_len or max_new_tokens" in capsys.readouterr().err


@pytest.mark.parametrize("code, message", [
    (errno.ENOSPC, "out/checkpoint-1/model.safetensors: no space left on the device; free some space"),
    (errno.EACCES, "out/checkpoint-1/model.safetensors: permission denied; check its permissions"),
    (errno.EROFS, "out/checkpoint-1/model.safetensors: read-only file system; choose a writable output_dir="),
    (errno.EDQUOT, "out/checkpoint-1/model.safetensors: disk quota exceeded; free some space"),
])
def test_a_full_or_unwritable_disk_during_a_checkpoint_is_exit_2(workdir, monkeypatch, capsys, code, message):
    import reasonloop.recipes.evaluate as ev

    def fail(cfg):
        raise OSError(code, os.strerror(code), "out/checkpoint-1/model.safetensors")

    monkeypatch.setattr(ev, "run", fail)
    assert main(["eval", "threads=1"]) == 2
    err = capsys.readouterr().err
    assert f"reasonloop eval: error: {message}" in err and "Traceback" not in err


def test_an_unexpected_os_error_is_internal(workdir, monkeypatch, capsys):
    import reasonloop.recipes.evaluate as ev

    monkeypatch.setattr(ev, "run", lambda cfg: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    assert main(["eval", "threads=1"]) == 1
    assert "internal error: OSError" in capsys.readouterr().err


def test_every_user_error_type_is_caught_by_one_boundary():
    from reasonloop.data.io import DataError
    from reasonloop.models.loading import ModelError
    from reasonloop.rewards.core import RewardError
    from reasonloop.sandbox.cli import SandboxArgumentError
    from reasonloop.sandbox.runner import IsolationError
    from reasonloop.tasks import TaskError
    from reasonloop.tasks.tabular import DatasetLoadError

    for kind in (ConfigError, DataError, ModelError, RewardError, SandboxArgumentError, IsolationError, TaskError,
                 DatasetLoadError):
        assert issubclass(kind, UserError), kind


def test_a_real_ctrl_c_exits_130_with_one_line(tmp_path, nano_model_dir):
    """SIGINT to a real `reasonloop eval` while it works: exit 130, one line, no KeyboardInterrupt traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    # a child inherits an ignored SIGINT (and Python then keeps ignoring it): start it with the default action,
    # as a shell does for a foreground command, whatever an earlier test or library left in this process
    proc = subprocess.Popen([sys.executable, "-m", "reasonloop.cli", "eval", f"model.name={nano_model_dir}",
                             "n=200", "k=8", "threads=1", f"output_dir={tmp_path / 'out'}"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "out" / "config.yaml").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "reasonloop eval: interrupted" in err and "KeyboardInterrupt" not in err and "Traceback" not in err

