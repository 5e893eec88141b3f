"""`reasonloop serve` as a real local server (a subprocess on a free port, the embedded tiny model), and
`rollout.engine=openai` against it: the same greedy completions as the torch engine, a GRPO run whose
rollouts come from it, and clear errors (not hangs) when the server dies or stops answering."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("openai", reason="rollout.engine=openai needs the openai extra (pip install 'reasonloop[openai]')")

from reasonloop.models.loading import ModelConfig, load_policy, render_prompt  # noqa: E402
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine  # noqa: E402
from reasonloop.rollout.openai_engine import ServerError  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")
# the compiled CPU decode step is off on both sides: its build/load costs seconds per process, and it is
# tested elsewhere (tests/rollout/test_speed_equivalence.py); the engines' samples do not depend on it
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "REASONLOOP_FUSED_DECODE": "0"}


def start_server(log_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`reasonloop serve port=0 ...` in a subprocess; returns it and its /v1 URL once it listens."""
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "reasonloop.cli", "serve", "port=0", "threads=1", *args],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)
    log.close()
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        if line.startswith("serve:") and " at http://" in line:
            return proc, line.split(" at ")[1].split()[0]
    proc.kill()
    raise AssertionError("serve did not start within 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        yield url
    finally:
        stop(proc)


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    return load_policy(ModelConfig(), None)


PROMPTS = ["What is 7+5?", "What is 12*3-4?", "What is 9-6?"]


def test_models_and_a_completion_with_logprobs(server, policy):
    with urllib.request.urlopen(server + "/models", timeout=60) as r:
        assert json.loads(r.read())["data"][0]["id"] == "embedded"
    tok, _ = policy
    status, out = post(server, {"model": "embedded", "prompt": render_prompt(tok, PROMPTS[0]), "n": 3,
                                "max_tokens": 40, "temperature": 0, "logprobs": 0})
    assert status == 200 and out["object"] == "text_completion" and len(out["choices"]) == 3
    first = out["choices"][0]
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["text"] == first["text"] for c in out["choices"])  # greedy: n identical samples
    lp = first["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == out["usage"]["completion_tokens"] // 3
    assert all(v <= 0 for v in lp["token_logprobs"])
    if first["finish_reason"] == "stop":  # stopped at EOS: the text is the tokens but EOS
        assert lp["tokens"][-1] == tok.eos_token and "".join(lp["tokens"][:-1]) == first["text"]


def test_stop_strings_are_cut_unless_asked_to_keep_them(server, policy):
    tok, _ = policy
    body = {"prompt": render_prompt(tok, PROMPTS[1]), "max_tokens": 40, "temperature": 0, "stop": ["</think>"],
            "logprobs": 1, "return_tokens_as_token_ids": True}
    _, cut = post(server, body)
    _, kept = post(server, {**body, "include_stop_str_in_output": True})
    c, k = cut["choices"][0], kept["choices"][0]
    assert c["finish_reason"] == k["finish_reason"] == "stop"
    assert k["text"] == c["text"] + "</think>" and "</think>" not in c["text"]
    assert k["logprobs"]["tokens"][-1] == f"token_id:{tok.convert_tokens_to_ids('</think>')}"


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": "1", "temperature": -1}, 400, "temperature must be >= 0"),
    ({"prompt": "1", "model": "gpt-4"}, 404, "The model `gpt-4` does not exist"),
    ({"prompt": "1", "stream": True}, 400, "`stream` is not supported"),
    ({"prompt": "1", "n": 0}, 400, "`n` must be in [1, 64]"),
    ({"prompt": "1", "max_tokens": 100000}, 400, "maximum context length is 256 tokens"),
    ({"prompt": [[1, 2], "x", 3.5]}, 400, "neither a string nor a list of token ids"),
    ({}, 400, "`prompt` must be"),
])
def test_bad_requests_get_openai_style_errors(server, body, status, message):
    got, out = post(server, body)
    assert got == status and message in out["error"]["message"], out


def test_openai_engine_matches_the_torch_engine_greedily(server, policy):
    tok, model = policy
    prompts = [render_prompt(tok, p) for p in PROMPTS]
    sampling = SamplingConfig(temperature=0, max_new_tokens=48)
    local = build_engine(RolloutConfig(fused_decode=False), model, tok).generate(prompts, 2, sampling)
    remote = build_engine(RolloutConfig(engine="openai", base_url=server), model, tok).generate(prompts, 2, sampling)
    assert remote.completions == local.completions
    assert remote.finish_reasons == local.finish_reasons
    assert torch.equal(remote.prompt_ids, local.prompt_ids) and torch.equal(remote.prompt_mask, local.prompt_mask)
    T = local.completion_ids.shape[1]
    assert torch.equal(remote.completion_ids[:, :T], local.completion_ids)
    assert torch.equal(remote.completion_mask[:, :T], local.completion_mask)
    torch.testing.assert_close(remote.logprobs[:, :T], local.logprobs, atol=1e-4, rtol=0)  # two processes' float32
    assert remote.group_size == 2


def test_openai_engine_samples_reproducibly_from_the_generator(server, policy):
    tok, model = policy
    engine = build_engine(RolloutConfig(engine="openai", base_url=server, concurrency=2), model, tok)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=32)
    prompts = [render_prompt(tok, p) for p in PROMPTS]
    a = engine.generate(prompts, 4, sampling, torch.Generator().manual_seed(3))
    b = engine.generate(prompts, 4, sampling, torch.Generator().manual_seed(3))
    assert a.completions == b.completions and torch.equal(a.completion_ids, b.completion_ids)
    assert len(set(a.completions)) > 1  # sampled, not greedy
    assert a.num_rows == 12 and (a.completion_mask.sum(-1) >= 1).all()


def test_grpo_runs_on_rollouts_from_the_server(server, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "reasonloop.cli", "train", "rollout.engine=openai", f"rollout.base_url={server}",
         "steps=3", "prompts_per_step=4", "group_size=4", "sampling.max_new_tokens=48", "eval_n=8", "eval_k=0",
         "save_every=0", "samples_every=0", "tis_cap=2.0", "threads=1", f"output_dir={out}"],
        capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"rollout: openai engine, model 'embedded' at {server}" in proc.stdout
    assert "the served model's weights are not updated" in proc.stderr  # update_weights warns, once
    assert proc.stderr.count("the served model's weights are not updated") == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert "engine: openai" in (out / "config.yaml").read_text()


def test_a_dead_server_is_a_clear_error_not_a_hang(tmp_path, policy):
    tok, model = policy
    proc, url = start_server(tmp_path / "serve.log")
    try:
        engine = build_engine(RolloutConfig(engine="openai", base_url=url, timeout=120, retries=1), model, tok)
        sampling = SamplingConfig(temperature=0, max_new_tokens=8)
        assert engine.generate([render_prompt(tok, PROMPTS[0])], 2, sampling).num_rows == 2
    finally:
        stop(proc)  # the server dies mid-run
    t0 = time.time()
    with pytest.raises(ServerError, match=rf"rollout.base_url={url}: cannot connect \(2 attempts"):
        engine.generate([render_prompt(tok, PROMPTS[0])], 2, sampling)
    assert time.time() - t0 < 10


def test_a_server_that_never_answers_times_out(policy):
    tok, _ = policy
    silent = socket.socket()  # accepts connections (the kernel's backlog) but never reads or answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    try:
        cfg = RolloutConfig(engine="openai", base_url=url, served_model="m", timeout=0.5, retries=1)
        engine = build_engine(cfg, None, tok)
        t0 = time.time()
        with pytest.raises(ServerError, match=r"no answer within rollout.timeout=0.5s \(2 attempts\)"):
            engine.generate(["What is 1+1?"], 2, SamplingConfig(max_new_tokens=4))
        assert time.time() - t0 < 10
    finally:
        silent.close()


def test_cli_reports_an_unreachable_server_and_exits_2(tmp_path):
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "reasonloop.cli", "train", "rollout.engine=openai",
         f"rollout.base_url=http://127.0.0.1:{port}/v1", "rollout.retries=0", "steps=1", "threads=1",
         f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 2
    assert (f"reasonloop train: error: rollout.base_url=http://127.0.0.1:{port}/v1: cannot connect (1 attempt"
            in proc.stderr), proc.stderr[-2000:]
    assert "is the server running?" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_in_use_is_a_user_error(nano_model_dir, capsys):
    from reasonloop.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", f"model.name={nano_model_dir}", f"port={port}", "threads=1"]) == 2
    err = capsys.readouterr().err
    assert f"reasonloop serve: error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another " \
           "port= (port=0 picks a free one) or host=" in err


def test_the_service_answers_without_http(nano_model_dir):
    """The request -> response mapping on its own: token-id prompts, several prompts x n, usage counts."""
    from reasonloop.recipes.serve import CompletionService, RequestError
    from reasonloop.rollout.sampler import TorchSampler

    tok, model = load_policy(ModelConfig(name=nano_model_dir), None)
    service = CompletionService(TorchSampler(model, tok, fused_decode=False), "nano", max_n=4)
    ids = tok("1+2=", add_special_tokens=False)["input_ids"]
    out = service.complete({"prompt": [ids, "3*4="], "n": 2, "max_tokens": 5, "temperature": 0.0, "seed": 1,
                            "logprobs": 0, "return_tokens_as_token_ids": True})
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]  # prompt-major: prompt 0 x 2, then prompt 1 x 2
    lengths = [len(c["logprobs"]["tokens"]) for c in out["choices"]]
    assert all(1 <= n <= 5 for n in lengths)
    prompt_tokens = len(ids) + len(tok("3*4=", add_special_tokens=False)["input_ids"])  # once per prompt
    assert out["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": sum(lengths),
                            "total_tokens": prompt_tokens + sum(lengths)}
    assert all(t.startswith("token_id:") for c in out["choices"] for t in c["logprobs"]["tokens"])
    with pytest.raises(RequestError, match=r"`n` must be in \[1, 4\], got 5"):
        service.complete({"prompt": "1", "n": 5})
    with pytest.raises(RequestError, match="`max_tokens` must be an integer, got '3'"):
        service.complete({"prompt": "1", "max_tokens": "3"})
