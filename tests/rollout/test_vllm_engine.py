"""`rollout.engine=vllm` without vLLM: its outputs -> RolloutBatch, the SamplingParams it builds, the
sleep/wake/push sequence (a fake LLM records the calls) and the LoRA-merged weights it pushes (real
CPU models). The real engine: the `gpu` test below and scripts/gpu_check.sh."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from reasonloop.errors import UserError
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine
from reasonloop.rollout.vllm_engine import (
    VLLMEngine,
    completion_rows,
    policy_weights,
    sampling_params,
)


def logprob_dicts(ids, values):
    """vLLM's per-position `{token id: Logprob}` for logprobs=0: the sampled token only."""
    return [{t: SimpleNamespace(logprob=v, rank=1, decoded_token=None)} for t, v in zip(ids, values)]


def sample(index, ids, values, text, finish):
    return SimpleNamespace(index=index, token_ids=tuple(ids), logprobs=logprob_dicts(ids, values), text=text,
                           finish_reason=finish, stop_reason=None)


def request_outputs():
    """Two prompts x 2 samples, the second prompt's samples returned out of order."""
    return [
        SimpleNamespace(prompt_token_ids=[10, 11, 12], outputs=[
            sample(0, [4, 5, 2], [-0.5, -0.25, -0.125], "ab", "stop"),  # EOS (2) ends it
            sample(1, [6, 7, 8, 9], [-1.0, -1.0, -1.0, -1.0], "cdef", "length")]),
        SimpleNamespace(prompt_token_ids=[13], outputs=[
            sample(1, [3], [-2.0], "x", "stop"),
            sample(0, [5, 2], [-0.75, -0.5], "b", "stop")]),
    ]


class FakeParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLLM:
    """Records what the engine asks of vLLM; generates from a fixed table."""

    def __init__(self):
        self.calls: list[str] = []
        self.loaded: list[list[tuple[str, torch.Tensor]]] = []
        self.model = SimpleNamespace(load_weights=self._load)

    def _load(self, weights):
        self.loaded.append([(k, v.clone()) for k, v in weights])
        self.calls.append("load_weights")

    def apply_model(self, fn):
        return [fn(self.model)]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")

    def sleep(self, level):
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up({','.join(tags)})")

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append("generate")
        self.prompts, self.params = prompts, sampling_params
        return request_outputs()[:len(prompts)]


def test_outputs_map_to_a_prompt_major_batch():
    rows = completion_rows(request_outputs(), n=2, max_new_tokens=8)
    assert [r.ids for r in rows] == [[4, 5, 2], [6, 7, 8, 9], [5, 2], [3]]
    assert [r.logprobs for r in rows] == [[-0.5, -0.25, -0.125], [-1.0] * 4, [-0.75, -0.5], [-2.0]]
    assert [r.finish_reason for r in rows] == ["stop", "length", "stop", "stop"]
    assert [r.text for r in rows] == ["ab", "cdef", "b", "x"]
    with pytest.raises(RuntimeError, match="vLLM returned 2 samples for a prompt, expected n=3"):
        completion_rows(request_outputs(), n=3, max_new_tokens=8)


def test_sampling_params_ask_for_the_sampled_logprob_and_keep_stop_strings():
    p = sampling_params(FakeParams, SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=40,
                                                   stop=["</answer>"]), n=8).kwargs
    assert p == {"n": 8, "temperature": 0.6, "top_p": 0.95, "top_k": -1, "min_p": 0.0, "max_tokens": 40,
                 "stop": ["</answer>"], "include_stop_str_in_output": True, "logprobs": 0,
                 "skip_special_tokens": True}
    assert sampling_params(FakeParams, SamplingConfig(top_k=20), n=1).kwargs["top_k"] == 20
    assert sampling_params(FakeParams, SamplingConfig(), n=1).kwargs["stop"] is None


def test_generate_pushes_weights_then_sleeps_and_wakes_in_order(nano_model, tokenizer):
    llm = FakeLLM()
    engine = VLLMEngine(RolloutConfig(engine="vllm"), nano_model, tokenizer, llm=llm, params_cls=FakeParams)
    prompts = ["1+2=", "3"]
    batch = engine.generate(prompts, 2, SamplingConfig(max_new_tokens=8))
    # first call: dummy weights replaced by the policy's, then generate, then sleep for the update
    assert llm.calls == ["load_weights", "reset_prefix_cache", "generate", "sleep(2)"]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert llm.prompts == [{"prompt_token_ids": i} for i in ids]
    assert batch.prompt_ids[0].tolist()[-len(ids[0]):] == ids[0] and batch.num_rows == 4
    assert batch.completion_ids.tolist() == [[4, 5, 2, 0], [6, 7, 8, 9], [5, 2, 0, 0], [3, 0, 0, 0]]
    assert batch.completion_mask.sum(-1).tolist() == [3, 4, 2, 1]
    assert batch.logprobs[1].tolist() == [-1.0] * 4 and batch.group_size == 2
    pushed = dict(llm.loaded[0])
    assert set(pushed) == set(nano_model.state_dict()) and torch.equal(
        pushed["model.embed_tokens.weight"], nano_model.model.embed_tokens.weight)
    # after an update: wake the weights, push, wake the KV cache, generate, sleep again
    llm.calls.clear()
    engine.update_weights(nano_model)
    assert llm.calls == []  # nothing until the next generation
    engine.generate(prompts, 2, SamplingConfig(max_new_tokens=8))
    assert llm.calls == ["wake_up(weights)", "load_weights", "reset_prefix_cache", "wake_up(kv_cache)", "generate",
                         "sleep(2)"]


def test_without_sleep_mode_weights_are_pushed_only_when_stale(nano_model, tokenizer):
    llm = FakeLLM()
    engine = VLLMEngine(RolloutConfig(engine="vllm", sleep_mode=False), nano_model, tokenizer, llm=llm,
                        params_cls=FakeParams)
    for _ in range(2):
        engine.generate(["1"], 2, SamplingConfig(max_new_tokens=4))
    engine.update_weights(nano_model)
    engine.generate(["1"], 2, SamplingConfig(max_new_tokens=4))
    assert llm.calls == ["load_weights", "reset_prefix_cache", "generate", "generate", "load_weights",
                         "reset_prefix_cache", "generate"]


def test_lora_weights_are_pushed_merged_and_the_model_is_untouched(nano_model):
    from reasonloop.models.loading import LoraConfig, add_lora

    plain_names = set(nano_model.state_dict())
    model = add_lora(nano_model, LoraConfig(r=4, target_modules="q_proj,v_proj"))
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q.lora_B.default.weight.fill_(0.01)  # a non-zero adapter (B starts at zero)
    base = q.base_layer.weight.detach().clone()
    expected = base + q.lora_B.default.weight @ q.lora_A.default.weight * q.scaling["default"]
    weights = policy_weights(model)
    assert iter(weights) is weights  # lazy: one merged layer alive at a time
    weights = dict(weights)
    assert set(weights) == plain_names  # the HF checkpoint's names, no lora_ factors
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"], expected, atol=1e-7, rtol=0)
    assert not torch.equal(weights["model.layers.0.self_attn.q_proj.weight"], base)
    assert torch.equal(weights["model.layers.0.self_attn.k_proj.weight"],  # not adapted: as it is
                       model.base_model.model.model.layers[0].self_attn.k_proj.weight)
    assert torch.equal(q.base_layer.weight, base)  # merged out of place: the base weights never move


def test_missing_vllm_is_a_user_error(monkeypatch, nano_model, tokenizer):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed (it is not, here)
    with pytest.raises(UserError, match=r"rollout.engine=vllm needs vLLM and a CUDA GPU: pip install 'reasonloop\[vllm\]'"):
        build_engine(RolloutConfig(engine="vllm"), nano_model, tokenizer)


@pytest.mark.gpu
def test_real_vllm_matches_the_torch_engine_greedily(nano_model_dir, tokenizer):
    """On a GPU with vLLM installed: the same greedy completions as the torch sampler, log-probs close."""
    pytest.importorskip("vllm", reason="needs the vllm extra")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(nano_model_dir).cuda()
    sampling = SamplingConfig(temperature=0, max_new_tokens=16)
    prompts = ["1+2=", "12*3-4=", "9-6="]
    local = build_engine(RolloutConfig(), model, tokenizer).generate(prompts, 2, sampling)
    remote = build_engine(RolloutConfig(engine="vllm", gpu_memory_utilization=0.2), model, tokenizer).generate(
        prompts, 2, sampling)
    assert remote.completions == local.completions
    T = local.completion_ids.shape[1]
    assert torch.equal(remote.completion_ids[:, :T].cpu(), local.completion_ids.cpu())
    torch.testing.assert_close(remote.logprobs[:, :T].cpu(), local.logprobs.cpu(), atol=2e-2, rtol=0)
