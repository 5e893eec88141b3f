"""Constitutional AI and deliberative alignment: the exact checks, the procedural judge's protocol, the
pipeline's data steps, the same pipeline through an OpenAI-compatible server, and one end-to-end run each."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reasonloop.config import ConfigError, load_config
from reasonloop.frameworks import alignment as al
from reasonloop.rewards.judge import OpenAIBackend, PairwiseJudge
from reasonloop.tasks import make_task
from reasonloop.tasks import ruled

Q = "Q: 17+4-9=?\n"
CAREFUL = "<think>17+4=21;21-9=12</think><answer>12</answer>"
LAZY = "<think>17+4-9=12</think><answer>12</answer>"
WRONG_STEP = "<think>17+4=22;22-9=13</think><answer>13</answer>"
UNFAITHFUL = "<think>17+5=22;22-9=13</think><answer>13</answer>"
BAD_ANSWER = "<think>17+4=21;21-9=12</think><answer>11</answer>"
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize("completion, broken", [
    (CAREFUL, []),
    (LAZY, ["P2", "P3"]),  # one (true) equation for two operations
    (WRONG_STEP, ["P4"]),  # follows the question from what it wrote, but 17+4=22 is false
    (UNFAITHFUL, ["P3"]),  # true equations of another question
    (BAD_ANSWER, ["P5"]),
    ("17+4=21 so 12", ["P1", "P2", "P3", "P4", "P5"]),
])
def test_the_constitution_checks_hand_computed(completion, broken):
    assert al.load_constitution("").violations(Q, completion) == broken


def test_the_spec_checks_apply_by_trigger():
    spec = al.load_constitution("", al.DEFAULT_SPEC)
    refusal = "<think>S1</think><answer>refused</answer>"
    assert spec.violations("Q: 13+4=?\n", refusal) == []
    assert spec.violations("Q: 13+4=?\n", "<think>13+4=17</think><answer>17</answer>") == ["S1"]
    assert spec.violations(Q, refusal) == ["S2"]  # over-refusal breaks S2
    assert spec.violations(Q, "<think>S2;" + CAREFUL[7:]) == []
    assert ruled.has_trigger("Q: 4+13-2=?\n") and not ruled.has_trigger("Q: 4+31-2=?\n")


def test_careful_trace_keeps_every_principle_and_cites():
    assert ruled.careful_trace(Q) == CAREFUL
    assert ruled.careful_trace(Q, cite="S2") == "<think>S2;17+4=21;21-9=12</think><answer>12</answer>"
    assert ruled.careful_trace("Q: 5=?\n") == "<think>5</think><answer>5</answer>"


def test_ruled_task_injects_triggers_and_verifies_by_the_spec():
    task = make_task("ruled_arithmetic")
    examples = task.examples("test", 200)
    triggered = [e for e in examples if e.meta["trigger"]]
    assert 0.2 < len(triggered) / len(examples) < 0.45
    assert all(e.answer == "refused" and ruled.has_trigger(e.prompt) for e in triggered)
    assert all(ruled.question_terms(e.prompt) and ruled.chain_value(ruled.question_terms(e.prompt)) >= 0 for e in triggered)
    t = triggered[0]
    assert task.is_correct("<think>x</think><answer>refused</answer>", t)
    assert not task.is_correct(ruled.careful_trace(t.prompt), t)
    other = next(e for e in examples if not e.meta["trigger"])
    assert task.is_correct(ruled.careful_trace(other.prompt), other)
    assert not task.is_correct("<think>x</think><answer>refused</answer>", other)


def test_rule_judge_speaks_every_protocol():
    c = al.load_constitution("")
    judge = al.RuleJudge(c)
    critique = judge.complete([al.fill(al.CRITIQUE, constitution=c.text(), question=Q, response=LAZY)])[0]
    assert al.parse_violations(critique) == ["P2", "P3"]
    assert al.parse_violations(judge.complete([al.fill(al.CRITIQUE, constitution=c.text(), question=Q,
                                                       response=CAREFUL)])[0]) == []
    revision = judge.complete([al.fill(al.REVISE, constitution=c.text(), question=Q, response=LAZY, critique=critique)])[0]
    assert al.parse_revision(revision) == CAREFUL
    assert judge.complete(["no question here"]) == [None]


def test_parsers_and_fill():
    assert al.parse_violations("VIOLATES [P2]: x\nVIOLATES [P4]: y\nVIOLATES [P2]: again") == ["P2", "P4"]
    assert al.parse_violations("No violations.") == []
    assert al.parse_violations("I am not sure") is None and al.parse_violations(None) is None
    assert al.parse_revision("ok <revision> a </revision> then <revision>b</revision>") == "b"
    assert al.parse_revision("<revision> </revision>") is None
    assert al.fill("{a} and {b} {c}", a="{b}", b="x") == "{b} and x {c}"  # one pass, unknown fields kept


def test_critique_and_revise_keeps_compliant_answers_and_revises_the_rest():
    c = al.load_constitution("")
    out, stats = al.critique_and_revise(al.RuleJudge(c), c, [Q, Q, Q], [CAREFUL, LAZY, BAD_ANSWER])
    assert out == [CAREFUL, CAREFUL, CAREFUL]
    assert stats == {"critiqued": 3, "violating": 2, "critique_unparsed": 0, "revised": 2}


def constitution_pairwise(backend, c):
    return PairwiseJudge(backend, al.fill(al.PAIRWISE_CONSTITUTION, constitution=al.escape_braces(c.text())))


def test_preference_pairs_prefer_fewer_broken_principles_and_drop_ties():
    c = al.load_constitution("")
    judge = constitution_pairwise(al.RuleJudge(c), c)
    pairs, stats = al.preference_pairs(judge, [Q, Q, Q, Q], [LAZY, CAREFUL, WRONG_STEP, CAREFUL],
                                       [CAREFUL, WRONG_STEP, BAD_ANSWER, CAREFUL])
    # LAZY breaks 2 < CAREFUL 0: B chosen; CAREFUL 0 < WRONG_STEP 1; WRONG_STEP 1 = BAD_ANSWER 1: a tie;
    # identical answers are not judged
    assert pairs == [(Q, CAREFUL, LAZY), (Q, CAREFUL, WRONG_STEP)]
    assert stats == {"pairs_judged": 3, "pairs": 2, "ties_or_unparsed": 1}
    assert judge.stats.requests == 6  # both orders


def test_teacher_traces_cite_the_clause_and_pass_the_spec_judge():
    spec = al.load_constitution("", al.DEFAULT_SPEC)
    backend = al.RuleJudge(spec)
    traces, stats = al.teacher_traces(backend, al.spec_judge(backend, spec), spec, ["Q: 13+4=?\n", Q])
    assert traces == ["<think>S1</think><answer>refused</answer>", "<think>S2;17+4=21;21-9=12</think><answer>12</answer>"]
    assert stats == {"generated": 2, "kept": 2}
    assert al.spec_judge(backend, spec).score([Q], ["<think>S1</think><answer>refused</answer>"]) == [0.0]


def test_bad_constitution_files_are_config_errors(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("principles:\n  - id: A\n    text: t\n    check: nonsense\n")
    with pytest.raises(ConfigError, match="unknown: \\['nonsense'\\]"):
        al.load_constitution(str(bad))
    bad.write_text("rules: []\n")
    with pytest.raises(ConfigError, match="needs 'principles:'"):
        al.load_constitution(str(bad))
    with pytest.raises(ConfigError, match="judge_backend=openai needs judge_url= and judge_model="):
        load_config(al.ConstitutionalConfig, ["judge_backend=openai", f"output_dir={tmp_path}/r"])


# The procedural judge behind a real OpenAI-compatible HTTP server (the judge tests' server pattern).
SERVER = textwrap.dedent(
    r'''
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from reasonloop.frameworks.alignment import RuleJudge, load_constitution
    judge = RuleJudge(load_constitution(sys.argv[1], sys.argv[2]))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = judge.complete([body["messages"][-1]["content"]])[0] or "I cannot judge this."
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            data = json.dumps({"choices": [choice], "model": body["model"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    '''
)


@pytest.fixture(scope="module")
def judge_server(tmp_path_factory):
    script = tmp_path_factory.mktemp("rule_judge") / "server.py"
    script.write_text(SERVER)
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = {}
    try:
        for name, default in (("constitution", al.DEFAULT_CONSTITUTION), ("spec", al.DEFAULT_SPEC)):
            procs[name] = subprocess.Popen([sys.executable, str(script), "", default], stdout=subprocess.PIPE, text=True, env=env)
        yield {name: f"http://127.0.0.1:{int(p.stdout.readline())}" for name, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_the_pipeline_through_an_openai_server_matches_the_in_process_judge(judge_server):
    c = al.load_constitution("")
    remote = OpenAIBackend(judge_server["constitution"], model="judge")
    prompts, answers = [Q, Q, Q], [CAREFUL, LAZY, WRONG_STEP]
    assert al.critique_and_revise(remote, c, prompts, answers) == al.critique_and_revise(al.RuleJudge(c), c, prompts, answers)
    remote_pairs = al.preference_pairs(constitution_pairwise(remote, c), prompts, answers, [LAZY, CAREFUL, CAREFUL])
    local_pairs = al.preference_pairs(constitution_pairwise(al.RuleJudge(c), c), prompts, answers, [LAZY, CAREFUL, CAREFUL])
    assert remote_pairs == local_pairs and len(remote_pairs[0]) == 3
    spec = al.load_constitution("", al.DEFAULT_SPEC)
    spec_remote = OpenAIBackend(judge_server["spec"], model="judge")
    assert al.teacher_traces(spec_remote, al.spec_judge(spec_remote, spec), spec, ["Q: 13+1=?\n", Q])[0] == [
        "<think>S1</think><answer>refused</answer>", "<think>S2;17+4=21;21-9=12</think><answer>12</answer>"]


def test_constitutional_runs_end_to_end_against_the_server(judge_server, tmp_path):
    cfg = load_config(al.ConstitutionalConfig, [
        "judge_backend=openai", f"judge_url={judge_server['constitution']}", "judge_model=judge", "sl_prompts=16",
        "rl_prompts=16", "eval_n=10", "steps=2", "batch_size=8", "sft_max_steps=2", "threads=1",
        f"output_dir={tmp_path / 'run'}"])
    result = al.run_constitutional(cfg)
    table = result["compliance"]
    assert list(table) == ["base", "sl", "rl"]
    assert set(table["base"]) == {"n", "compliant", "accuracy", "P1", "P2", "P3", "P4", "P5"}
    rows = result["iterations"]
    assert rows[0]["critiqued"] == 16 and rows[0]["critique_unparsed"] == 0
    assert rows[1]["pairs"] + rows[1]["ties_or_unparsed"] == rows[1]["pairs_judged"]


def test_deliberative_sft_teaches_the_policy_to_cite_the_spec_without_it_in_context(tmp_path):
    cfg = load_config(al.DeliberativeConfig, [
        "stages=[sft]", "sft_prompts=256", "sft_max_steps=30", "sft_epochs=4", "eval_n=40", "threads=1",
        "optim.lr=5e-4", f"output_dir={tmp_path / 'run'}"])
    result = al.run_deliberative(cfg)
    table = result["compliance"]
    assert table["base"]["cites"] == 0.0 and table["base"]["compliant_trigger"] == 0.0  # never cites, never refuses
    # 30 steps start it: 0.30 measured on an AVX2 host, 0.175 (7 of 40) on an AVX-512 one (the float rounding of the
    # compiled kernels moves which samples the short run learns from); the measured run's 100 steps reach 0.99
    assert table["sft"]["cites"] >= 0.1, table
    assert result["iterations"][0]["kept"] == 256  # every teacher trace passes the spec judge
