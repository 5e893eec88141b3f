"""rollout.decode_precision=bf16: the compiled CPU decode step's projections in bfloat16 (fused.FusedDecoder(bf16=True)).

oneDNN packs bf16 weights only on CPUs with bf16 instructions (AVX-512 BF16, AMX, AVX-NE-CONVERT). The tests of
the path itself skip elsewhere; the refusal on a CPU without them is tested everywhere, by hiding the
instructions from oneDNN (`ONEDNN_MAX_CPU_ISA=AVX2`) in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reasonloop.config import ConfigError
from reasonloop.bench.timing import logprob_gap
from reasonloop.rollout import fused
from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine
from reasonloop.rollout.sampler import TorchSampler

from decoder_check import PROMPTS, compiled_step_follows_the_static_decoder, small_model

SRC = str(Path(__file__).parents[2] / "src")
needs_bf16 = pytest.mark.skipif(not (fused.available() and fused.bf16_supported()),
                                reason="this CPU has no bf16 instructions for oneDNN (AVX-512 BF16, AMX); "
                                       "test_without_bf16_instructions_it_is_refused covers it here")


@needs_bf16
@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v biases, packed as bf16 beside the weights
def test_the_bf16_step_follows_the_float32_decoder_within_bf16_rounding(tokenizer, arch):
    model = small_model(tokenizer, arch)
    compiled_step_follows_the_static_decoder(model, tokenizer, atol=3e-2, rtol=3e-2, bf16=True)
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):  # it is bf16: outside fp32's tolerance
        compiled_step_follows_the_static_decoder(model, tokenizer, atol=2e-5, rtol=1e-4, bf16=True)


@needs_bf16
def test_bf16_sampling_reports_its_own_logprobs_close_to_the_trainers(nano_model, tokenizer):
    """The sampler's log-probs are the bf16 step's: near the float32 forward's on the same tokens, not equal."""
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=24)
    engine = build_engine(RolloutConfig(decode_precision="bf16"), nano_model, tokenizer)
    batch = engine.generate(PROMPTS, 4, sampling, torch.Generator().manual_seed(0))
    packed = engine._packed
    assert packed.key[1] is True and packed.weights[2].dtype == torch.bfloat16 and packed.head[0].dtype == torch.float32
    gap = logprob_gap(nano_model, batch, sampling.temperature)
    assert 0 < gap["mean_abs_gap"] < 1e-2 and gap["max_abs_gap"] < 0.2, gap
    assert 0.8 < gap["min_ratio"] <= gap["max_ratio"] < 1.25, gap


@needs_bf16
def test_the_bench_replays_the_bf16_projections_in_bf16(nano_model, tokenizer):
    """`bench`'s matmul bound replays a call's projections at the precision they ran in."""
    from reasonloop.bench.timing import ONEDNN_LINEAR, _replay, recorded_gemms

    engine = build_engine(RolloutConfig(decode_precision="bf16"), nano_model, tokenizer)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=4)
    gemms = recorded_gemms(lambda: engine.generate(PROMPTS, 2, sampling, torch.Generator().manual_seed(0)))
    linears = [g for g in gemms if g[0] == ONEDNN_LINEAR]
    assert linears and all(dtype == torch.bfloat16 for _, _, dtype in linears)
    others = [(shapes, dtype) for name, shapes, dtype in gemms if name != ONEDNN_LINEAR]  # the prefill's, the heads
    head = nano_model.lm_head.weight.shape
    assert {dtype for shapes, dtype in others if head[::-1] not in map(tuple, shapes)} == {torch.bfloat16}
    assert {dtype for shapes, dtype in others if head[::-1] in map(tuple, shapes)} == {torch.float32}
    name, shapes, dtype = linears[0]
    assert _replay(name, shapes, torch.device("cpu"), dtype=dtype)().dtype == torch.bfloat16


@needs_bf16
def test_float32_and_bf16_packs_are_never_mixed_up(tokenizer):
    model = small_model(tokenizer)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8)
    fp32 = TorchSampler(model, tokenizer)
    fp32.generate(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        dec = fused.FusedDecoder(model, 2, 2, 8, 8, packed=fp32._packed, bf16=True)
    assert dec.packed is not fp32._packed and dec.weights[2].dtype == torch.bfloat16
    assert fp32._packed.weights[2].dtype == torch.float32


def test_the_precision_is_checked_in_the_config():
    with pytest.raises(ConfigError, match="rollout.decode_precision"):
        RolloutConfig(decode_precision="fp16")
    with pytest.raises(ConfigError, match="torch/tree engine's compiled CPU step"):
        RolloutConfig(engine="openai", base_url="http://localhost:8000/v1", decode_precision="bf16")


def test_without_bf16_instructions_it_is_refused(nano_model_dir, tmp_path):
    """On a CPU whose oneDNN has no bf16 path, `reasonloop train rollout.decode_precision=bf16` stops with one
    line naming the fix (exit 2), before any step; the same config at fp32 is unaffected."""
    env = {**os.environ, "PYTHONPATH": SRC, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "from reasonloop.rollout import fused; print(fused.bf16_supported())"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "False", probe.stderr[-2000:]
    done = subprocess.run([sys.executable, "-m", "reasonloop", "train", f"model.name={nano_model_dir}",
                           f"output_dir={tmp_path / 'run'}", "steps=1", "rollout.decode_precision=bf16"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "rollout.decode_precision=bf16 needs a CPU with bf16 instructions" in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@needs_bf16
def test_a_bf16_run_samples_in_bf16_and_evaluates_at_float32(nano_model_dir, tmp_path):
    """The held-out tables of a bf16-decoding run measure the float32 model, as those of an fp32 run do."""
    from reasonloop.config import load_config
    from reasonloop.recipes import rl

    args = [f"model.name={nano_model_dir}", f"output_dir={tmp_path / 'run'}", "steps=1", "prompts_per_step=2",
            "group_size=2", "sampling.max_new_tokens=6", "eval_n=4", "eval_k=0", "train_pool=8", "threads=1"]
    trainer = rl.Trainer(load_config(rl.Config, [*args, "rollout.decode_precision=bf16"]))
    assert trainer.engine.bf16 and not trainer.eval_engine().bf16
    assert trainer.eval_engine() is trainer.eval_engine()  # built once
    plain = rl.Trainer(load_config(rl.Config, [*args[:1], f"output_dir={tmp_path / 'fp32'}", *args[2:]]))
    assert plain.eval_engine() is plain.engine
    assert trainer.evaluate()["overall"] == plain.evaluate()["overall"]


def test_the_multi_turn_engine_refuses_bf16():
    from reasonloop.config import load_config
    from reasonloop.recipes import rl

    with pytest.raises(ConfigError, match="multi-turn engine"):
        load_config(rl.Config, ["agent.env=tools", "rollout.decode_precision=bf16"])


@needs_bf16
def test_without_the_compiled_step_bf16_says_it_samples_in_fp32(nano_model, tokenizer, caplog):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8)
    bf16 = TorchSampler(nano_model, tokenizer, fused_decode=False, decode_precision="bf16")
    fp32 = TorchSampler(nano_model, tokenizer, fused_decode=False)
    with caplog.at_level("WARNING", logger="reasonloop.rollout.sampler"):
        first = bf16.generate(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
        bf16.generate(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    assert [r.message for r in caplog.records].count(
        "rollout.decode_precision=bf16: this model or run does not decode through the compiled step (fused_decode off, "
        "or a structure it does not implement), so it samples in fp32") == 1
    assert torch.equal(first.logprobs, fp32.generate(PROMPTS, 2, sampling, torch.Generator().manual_seed(0)).logprobs)


@needs_bf16
def test_the_tree_engine_expands_nodes_with_the_bf16_step(nano_model, tokenizer):
    """rollout.engine=tree: node expansions decode through the bf16 step and sample what the bf16 sampler does."""
    step = SamplingConfig(temperature=1.0, max_new_tokens=10)
    engine = build_engine(RolloutConfig(engine="tree", decode_precision="bf16"), nano_model, tokenizer)
    decoder = engine._decoder(6, 40, nodes=3, group=2, width=20)
    assert decoder.d.bf16 and decoder.d.weights[2].dtype == torch.bfloat16
    children = engine.expand(engine.roots(PROMPTS[:3]), 3, step, torch.Generator().manual_seed(3))
    first = engine.sampler.generate(PROMPTS[:3], 3, step, torch.Generator().manual_seed(3))
    assert engine.sampler.bf16 and [c.text for c in children] == first.completions
    # the two decode in different batch layouts, and rounding to bf16 widens their float differences: the fp32 test
    # (test_prefix_cache) allows 1e-4 per completion, here 2e-3 was measured over 10 tokens, so 5e-3
    torch.testing.assert_close(torch.tensor([c.logprob for c in children]), first.logprobs.sum(-1), atol=5e-3, rtol=0)
