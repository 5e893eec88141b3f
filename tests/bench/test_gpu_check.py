"""The CPU-checkable parts of scripts/gpu_check.sh: the model it builds, its configs, its harness run on
a tiny model on the CPU (torch path), its verdicts, and its fast failure without CUDA."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reasonloop.bench import gpu_check


def qwen2_params(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv_heads: int) -> int:
    """Parameters of a tied-embedding Qwen2 (q/k/v biases, no o/MLP biases, two RMSNorms a layer + a final one)."""
    head = hidden // heads
    attn = hidden * hidden + hidden + 2 * (hidden * kv_heads * head + kv_heads * head) + hidden * hidden
    return vocab * hidden + layers * (attn + 3 * hidden * inter + 2 * hidden) + hidden


def test_the_tiny_model_is_a_saved_qwen2_with_the_char_tokenizer(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, params = gpu_check.build_model(tmp_path / "m", "tiny")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen2" and model.dtype == torch.bfloat16
    assert params == sum(p.numel() for p in model.parameters()) == qwen2_params(len(tokenizer), 32, 64, 2, 4, 2)
    assert AutoTokenizer.from_pretrained(path)("1+2", add_special_tokens=False)["input_ids"] == \
        tokenizer("1+2", add_special_tokens=False)["input_ids"]


def test_the_100m_shape_has_about_100m_parameters(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):  # no memory, no time
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True,
                                             **gpu_check.SIZES["100m"]))
    n = sum(p.numel() for p in model.parameters())
    assert n == qwen2_params(len(tokenizer), 768, 3072, 12, 12, 2) and 95e6 < n < 110e6


def test_the_grpo_config_loads(tmp_path):
    from reasonloop.config import load_config
    from reasonloop.recipes import rl

    cfg = load_config(rl.Config, gpu_check.rl_args("m", tmp_path, steps=4))
    assert (cfg.model.dtype, cfg.model.device, cfg.steps, cfg.tis_cap) == ("bfloat16", "cuda", 4, 2.0)
    assert cfg.reward_funcs == ["reasonloop.bench.gpu_check:digit_reward"] and not cfg.task_rewards
    assert gpu_check.digit_reward(["a1b2", "", "77"]) == [0.5, 0.0, 1.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_without_cuda_it_stops_at_once_with_exit_2(capsys):
    assert gpu_check.main(["--size", "tiny"]) == 2
    assert "gpu_check: needs a CUDA GPU and none is visible" in capsys.readouterr().err


def test_the_torch_path_runs_and_its_logprobs_agree_on_cpu(tmp_path):
    path, _ = gpu_check.build_model(tmp_path / "m", "tiny")
    r = gpu_check.run_path("torch", path, tmp_path, steps=2, device="cpu", prompts=2, group=4, tokens=16,
                           gen_prompts=2, gen_tokens=16)
    assert len(r["steps"]) == 2 and all(math.isfinite(s["loss"]) for s in r["steps"])
    assert len(r["gaps"]) == 2 and all(g["tokens"] > 0 for g in r["gaps"])
    assert r["generate_tokens_per_s"] > 0 and r["generate_shape"] == "2 prompts x 8 samples x 16 tokens"
    verdicts = gpu_check.checks({"torch": r})
    assert [name for name, _, _ in verdicts] == ["torch: losses finite",
                                                 "torch: mean |engine - trainer| log-prob <= 0.02"]
    assert all(ok for _, ok, _ in verdicts), verdicts
    json.dumps(r)  # what gpu_check.json records


def test_a_missed_weight_push_and_a_loss_gap_fail():
    step = {"loss": 0.0}
    results = {
        "torch": {"steps": [step], "gaps": [{"mean_abs_gap": 0.01, "max_abs_gap": 0.1}]},
        "vllm": {"steps": [{"loss": 0.2}], "gaps": [{"mean_abs_gap": 0.03, "max_abs_gap": 0.3}],
                 "after_training_gap": 0.4, "stale_gap": 0.5},
    }
    verdicts = {name: (ok, detail) for name, ok, detail in gpu_check.checks(results)}
    assert verdicts["vllm: mean |engine - trainer| log-prob <= 0.05"][0]
    assert verdicts["vllm: weight push took effect"] == (
        False, "gap to trained weights 0.4000 vs to initial weights 0.5000")
    assert verdicts["step-1 loss torch vs vllm within 0.05"] == (False, "0.00000 vs 0.20000")
