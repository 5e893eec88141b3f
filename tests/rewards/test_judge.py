"""LLM judges against a real local OpenAI-compatible HTTP server and a tiny random HF model."""

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec, compute_rewards
from reasonloop.rewards.judge import (
    ADDITIVE_5,
    RUBRIC_10,
    EnsembleJudge,
    HFJudgeBackend,
    OpenAIBackend,
    PairwiseJudge,
    ScoreJudge,
    parse_score,
    parse_verdict,
    self_judge,
)

# A minimal OpenAI-compatible server: its verdict is a pure function of the judge prompt.
#   score prompts: "good" in the response -> top score; "garble" -> no score; else a low score
#   pairwise prompts: prefers the answer containing "good", whatever its position
SERVER = textwrap.dedent(
    r'''
    import json, re, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    def decide(prompt):
        if "[The Start of Assistant A's Answer]" in prompt:
            a = prompt.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
            return "A is better. [[A]]" if "good" in a else "B is better. [[B]]"
        response = prompt.split("<response>")[1].split("</response>")[0] if "<response>" in prompt else prompt
        if "garble" in response:
            return "I refuse to give a number."
        ten = "scale of 1 to 10" in prompt
        if "good" in response:
            return "Rating: [[9]]" if ten else "Great work. Score: 5"
        return "Rating: [[3]]" if ten else "Weak. Score: 1"

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v1/chat/completions":
                text = decide(body["messages"][-1]["content"])
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            elif self.path == "/v1/completions":
                choice = {"index": 0, "text": decide(body["prompt"]), "finish_reason": "stop"}
            else:
                self.send_error(404)
                return
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
def server_url(tmp_path_factory):
    script = tmp_path_factory.mktemp("judge_server") / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


PROMPTS = ["Explain 2+2.", "Explain 2+2.", "Explain 2+2."]
RESPONSES = ["a good answer", "a lazy answer", "garble garble"]


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_http_score_judge_normalises_and_counts_parse_failures(server_url, api):
    judge = ScoreJudge(OpenAIBackend(server_url, model="judge", api=api), ADDITIVE_5)
    assert judge.score(PROMPTS, RESPONSES) == [1.0, pytest.approx(0.2), None]
    assert (judge.stats.requests, judge.stats.parse_failures, judge.stats.transport_failures) == (3, 1, 0)
    rubric = ScoreJudge(OpenAIBackend(server_url + "/v1", model="judge", api=api), RUBRIC_10)
    assert rubric.score(PROMPTS[:2], RESPONSES[:2]) == [pytest.approx(8 / 9), pytest.approx(2 / 9)]


def test_pairwise_judge_is_position_debiased(server_url):
    judge = PairwiseJudge(OpenAIBackend(server_url, model="judge"))
    assert judge.compare(["q", "q"], ["good one", "bad one"], ["bad one", "good one"]) == [1.0, 0.0]
    assert judge.stats.requests == 4  # both orders asked


def test_ensemble_and_reward_composition(server_url):
    five = ScoreJudge(OpenAIBackend(server_url, model="j1"), ADDITIVE_5)
    ten = ScoreJudge(OpenAIBackend(server_url, model="j2", api="completions"), RUBRIC_10)
    ensemble = EnsembleJudge([five, ten])
    assert ensemble.score(PROMPTS, RESPONSES) == [pytest.approx((1 + 8 / 9) / 2), pytest.approx((0.2 + 2 / 9) / 2), None]
    examples = [Example(prompt=p, answer="") for p in PROMPTS]
    result = compute_rewards([RewardSpec("judge", ensemble.as_reward_fn(), 2.0)], RESPONSES, examples)
    assert result.total.tolist() == pytest.approx([(1 + 8 / 9), (0.2 + 2 / 9), 0.0])  # None scores 0, no crash


def test_unreachable_server_is_a_counted_failure_not_a_crash():
    judge = ScoreJudge(OpenAIBackend("http://127.0.0.1:9", model="x", timeout_s=2))
    assert judge.score(["q"], ["r"]) == [None]
    assert judge.stats.transport_failures == 1


@pytest.mark.parametrize(
    "reply,template,expected",
    [
        ("Score: 4", ADDITIVE_5, 0.8),
        ("First I thought Score: 2 but on reflection Score: 3", ADDITIVE_5, 0.6),  # the last one counts
        ("**Score:** 5", ADDITIVE_5, 1.0),
        ("Score: 7", ADDITIVE_5, None),  # out of range is a misread, not a clamp
        ("Rating: [[10]]", RUBRIC_10, 1.0),
        ("I'd say [[1]]", RUBRIC_10, 0.0),
        ("no number at all", RUBRIC_10, None),
    ],
)
def test_parse_score(reply, template, expected):
    assert parse_score(reply, template) == (pytest.approx(expected) if expected is not None else None)


def test_parse_verdict():
    assert [parse_verdict(r) for r in ["[[A]]", "tie [[C]]", "[[A]] no wait [[B]]", "A"]] == ["A", "C", "B", None]


def test_hf_judge_with_tiny_random_model_counts_failures_and_restores_train_mode(tiny_lm_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model.train()
    tokenizer.padding_side = "right"
    judge = self_judge(model, tokenizer, RUBRIC_10, max_new_tokens=8)
    scores = judge.score(["2+2?", "Name a colour."], ["4", "red"])
    assert len(scores) == 2 and judge.stats.requests == 2
    assert judge.stats.parse_failures == sum(s is None for s in scores)
    assert model.training and tokenizer.padding_side == "right"  # the policy is handed back as found
    backend = HFJudgeBackend.from_pretrained(tiny_lm_dir, max_new_tokens=5)
    replies = backend.complete(["abc", "a much longer prompt"])
    assert all(isinstance(r, str) for r in replies)
    with torch.no_grad():  # greedy decoding is deterministic and batch-padding invariant
        assert backend.complete(["abc"]) == replies[:1]
