"""`rollout.engine=openai` without a server: the response -> RolloutBatch mapping, the request, the config
checks and the errors. The engine against a real server: tests/recipes/test_serve.py."""

from __future__ import annotations

import logging
import socket
import sys

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.errors import UserError
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine
from reasonloop.rollout.openai_engine import completion_row, request_body, rollout_batch


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_server_token_ids_are_taken_as_they_are(tokenizer):
    choice = {"text": "12", "finish_reason": "stop",
              "logprobs": {"tokens": ["token_id:5", "token_id:6", "token_id:2"], "token_logprobs": [-0.5, -1.0, -0.25]}}
    row = completion_row(choice, tokenizer, stop=[], max_tokens=8)
    assert (row.ids, row.logprobs, row.text, row.finish_reason) == ([5, 6, 2], [-0.5, -1.0, -0.25], "12", "stop")
    assert (row.ids_from, row.logprobs_from) == ("server", "server")


def test_text_is_retokenised_and_eos_added_when_the_server_stopped_at_it(tokenizer):
    eos = tokenizer.eos_token_id
    # llama.cpp style: token strings, EOS not among them (3 log-probs for 3 text tokens + EOS: spread)
    choice = {"text": "7+5", "finish_reason": "stop",
              "logprobs": {"tokens": ["7", "+", "5"], "token_logprobs": [-0.1, -0.2, -0.3]}}
    row = completion_row(choice, tokenizer, stop=[], max_tokens=8)
    assert row.ids == ids_of(tokenizer, "7+5") + [eos] and row.ids_from == "text"
    assert row.logprobs == pytest.approx([-0.15] * 4) and row.logprobs_from == "spread"  # total -0.6 over 4
    # vLLM style without ids: EOS reported as a token ("" text): counts match, the server's values stay
    choice["logprobs"] = {"tokens": ["7", "+", "5", ""], "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}
    row = completion_row(choice, tokenizer, stop=[], max_tokens=8)
    assert row.logprobs == [-0.1, -0.2, -0.3, -0.4] and row.logprobs_from == "server"


def test_a_stop_string_ending_the_text_means_no_eos(tokenizer):
    choice = {"text": "3</think>", "finish_reason": "stop", "logprobs": None}
    row = completion_row(choice, tokenizer, stop=["</think>"], max_tokens=8)
    assert row.ids == ids_of(tokenizer, "3</think>") and tokenizer.eos_token_id not in row.ids
    assert row.logprobs == [0.0] * len(row.ids) and row.logprobs_from == "none"


def test_length_and_unknown_finish_reasons_are_truncations(tokenizer):
    for reason in ("length", None, "abort"):
        row = completion_row({"text": "123", "finish_reason": reason}, tokenizer, stop=[], max_tokens=8)
        assert row.finish_reason == "length" and row.ids == ids_of(tokenizer, "123")  # no EOS appended
    long = completion_row({"text": "123456", "finish_reason": "stop"}, tokenizer, stop=[], max_tokens=4)
    assert len(long.ids) == 4 and long.finish_reason == "length"  # never longer than max_new_tokens


def test_rows_become_a_prompt_major_rollout_batch():
    rows = [completion_row({"text": "", "finish_reason": fr, "logprobs": {"tokens": toks, "token_logprobs": lps}},
                           None, [], 8)
            for fr, toks, lps in [("stop", ["token_id:4", "token_id:2"], [-1.0, -2.0]),
                                  ("length", ["token_id:7", "token_id:8", "token_id:9"], [-0.5, -0.5, -0.5]),
                                  ("stop", ["token_id:2"], [-3.0]),
                                  ("stop", ["token_id:5", "token_id:2"], [-0.25, -0.75])]]
    batch = rollout_batch([[10, 11, 12], [13]], rows, n=2, pad_id=0)
    assert batch.prompt_ids.tolist() == [[10, 11, 12]] * 2 + [[0, 0, 13]] * 2
    assert batch.prompt_mask.tolist() == [[1, 1, 1]] * 2 + [[0, 0, 1]] * 2
    assert batch.completion_ids.tolist() == [[4, 2, 0], [7, 8, 9], [2, 0, 0], [5, 2, 0]]
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch.logprobs.tolist() == [[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5], [-3.0, 0.0, 0.0], [-0.25, -0.75, 0.0]]
    assert batch.finish_reasons == ["stop", "length", "stop", "stop"] and batch.group_size == 2


def test_the_request_asks_for_ids_logprobs_and_n():
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=32, stop=["</answer>"])
    body = request_body([1, 2, 3], 4, sampling, seed=11)
    assert body == {"prompt": [1, 2, 3], "n": 4, "max_tokens": 32, "temperature": 0.7, "top_p": 0.9, "logprobs": 1,
                    "echo": False, "stop": ["</answer>"], "seed": 11,
                    "extra_body": {"return_tokens_as_token_ids": True, "include_stop_str_in_output": True,
                                   "top_k": 20}}
    plain = request_body([1], 1, SamplingConfig(), seed=None)
    assert "stop" not in plain and "seed" not in plain and set(plain["extra_body"]) == {
        "return_tokens_as_token_ids", "include_stop_str_in_output"}


@pytest.mark.parametrize("args, message", [
    (["rollout.engine=openai"], "rollout.engine=openai needs rollout.base_url"),
    (["rollout.engine=openai", "rollout.base_url=localhost:8000"], "is not an http(s) URL"),
    (["rollout.engine=openai", "rollout.base_url=http://h/v1", "rollout.api_key=sk-123abc"],
     "rollout.api_key names an environment variable"),
    (["rollout.engine=openia"], "did you mean 'openai'"),
    (["rollout.concurrency=0"], "rollout.concurrency must be >= 1"),
    (["rollout.timeout=0"], "rollout.timeout must be > 0"),
    (["rollout.vllm_device=gpu1"], "use empty (the policy's GPU) or cuda:N"),
])
def test_config_errors_name_the_key(args, message):
    from reasonloop.recipes import rl

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(rl.Config, args)


def test_missing_client_or_key_are_user_errors(monkeypatch, tokenizer):
    cfg = RolloutConfig(engine="openai", base_url="http://127.0.0.1:9/v1", api_key="REASONLOOP_TEST_KEY")
    monkeypatch.delenv("REASONLOOP_TEST_KEY", raising=False)
    pytest.importorskip("openai")
    with pytest.raises(UserError, match="the environment variable REASONLOOP_TEST_KEY is not set"):
        build_engine(cfg, None, tokenizer)
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    with pytest.raises(UserError, match=r"needs the openai client: pip install 'reasonloop\[openai\]'"):
        build_engine(cfg, None, tokenizer)


def test_an_unreachable_server_fails_at_once(tokenizer):
    pytest.importorskip("openai")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = RolloutConfig(engine="openai", base_url=f"http://127.0.0.1:{port}/v1", retries=0)
    with pytest.raises(UserError, match=rf"rollout.base_url=http://127.0.0.1:{port}/v1: cannot connect \(1 attempt"):
        build_engine(cfg, None, tokenizer)  # asks /v1/models for the model name


def test_update_weights_warns_once(tokenizer, caplog):
    pytest.importorskip("openai")
    from reasonloop.rollout.openai_engine import OpenAIEngine

    engine = OpenAIEngine.__new__(OpenAIEngine)  # no server: only the warning bookkeeping
    engine._warned, engine._lock = set(), __import__("threading").Lock()
    with caplog.at_level(logging.WARNING, logger="reasonloop.rollout.openai_engine"):
        for _ in range(3):
            engine.update_weights(torch.nn.Linear(1, 1))
    assert [r.getMessage() for r in caplog.records].count(
        "rollout.engine=openai: the served model's weights are not updated; later rollouts still come from the "
        "served weights (off-policy: fine for data and evaluation, drifting for on-policy RL)") == 1


class FakeCompletions:
    """`client.completions` of a server that ignores `n` (as llama.cpp's does): one choice per request."""

    def __init__(self, honour_n: bool):
        self.honour_n = honour_n
        self.requests: list[dict] = []

    def create(self, **body):
        self.requests.append(body)
        k = body["n"] if self.honour_n else 1
        last = body["prompt"][-1]
        choices = [{"index": i, "text": "", "finish_reason": "stop",
                    "logprobs": {"tokens": [f"token_id:{last + i}", "token_id:2"], "token_logprobs": [-1.0, -0.5]}}
                   for i in range(k)]
        return __import__("types").SimpleNamespace(model_dump=lambda: {"choices": choices})


def fake_engine(tokenizer, honour_n: bool):
    from types import SimpleNamespace

    from reasonloop.rollout.openai_engine import OpenAIEngine

    engine = OpenAIEngine.__new__(OpenAIEngine)  # everything __init__ sets, without a server
    engine.cfg = RolloutConfig(engine="openai", base_url="http://fake/v1", concurrency=2)
    engine.tokenizer, engine.base_url, engine.model_name = tokenizer, "http://fake/v1", "m"
    engine._warned, engine._lock = set(), __import__("threading").Lock()
    engine.client = SimpleNamespace(completions=FakeCompletions(honour_n))
    return engine


@pytest.mark.parametrize("honour_n", [True, False])
def test_generate_sends_token_ids_and_gets_n_samples_either_way(tokenizer, honour_n, caplog):
    pytest.importorskip("openai")
    engine = fake_engine(tokenizer, honour_n)
    prompts = ["1+2=", "34"]
    with caplog.at_level(logging.WARNING):
        batch = engine.generate(prompts, 3, SamplingConfig(max_new_tokens=4), torch.Generator().manual_seed(0))
    ids = [ids_of(tokenizer, p) for p in prompts]
    requests = engine.client.completions.requests
    assert sorted(r["prompt"][-1] for r in requests if r["n"] == 3 or not honour_n) == sorted(
        [i[-1] for i in ids] * (1 if honour_n else 3))
    if honour_n:
        assert len(requests) == 2 and all(r["n"] == 3 for r in requests)
    else:  # one n=3 request, then two n=1 requests per prompt, seeds shifted by the samples already there
        assert len(requests) == 6 and sorted(r["n"] for r in requests) == [1, 1, 1, 1, 3, 3]
        for prompt in ids:
            seeds = sorted(r["seed"] for r in requests if r["prompt"] == prompt)
            assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
        assert "the server returned 1 of n=3 samples" in caplog.text
    first = [ids[0][-1] + i for i in range(3)] if honour_n else [ids[0][-1]] * 3
    assert batch.completion_ids[:3, 0].tolist() == first and batch.completion_ids[:, 1].tolist() == [2] * 6
    assert batch.num_rows == 6 and batch.group_size == 3 and batch.logprobs[0].tolist() == [-1.0, -0.5]
