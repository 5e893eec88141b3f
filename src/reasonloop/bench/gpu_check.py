"""GPU check (issue 15): GRPO with the torch and the vLLM (colocated) engines on one GPU, no downloads.

`scripts/gpu_check.sh [--size 100m] [--steps 4] [--out DIR] [--skip-vllm]` (or
`python -m reasonloop.bench.gpu_check ...`). Budget: under 8 minutes on one GPU; nothing is
downloaded. It

1. builds a randomly initialised Qwen2-shaped model (`SIZES["100m"]`: 12 layers, hidden 768, GQA
   12/2 heads, MLP 3072: ~101M parameters with the shipped character tokenizer) and saves it with
   `save_pretrained` (bf16) and the tokenizer into a temporary directory;
2. for each engine (torch, then vllm colocated with sleep mode), runs `steps` GRPO steps of
   `recipes/rl.Trainer` in bf16 on the GPU: arithmetic prompts, 16 prompts x 8 samples, 128 new
   tokens, a reward that varies between samples (`digit_reward`: the share of digits, since a random
   model never answers right), `tis_cap=2`, lr 3e-4 (so the weights move and a missed push shows);
3. measures, on every rollout batch, the engine's sampled log-probs against the trainer's own
   recomputation on the same tokens with the current weights (mean and max |difference| per token);
4. measures generation alone: 64 prompts x 8 samples x 256 tokens, tokens/s per engine.

Checks (exit 1 when one fails; the numbers go to `<out>/gpu_check.json`):

- log-prob agreement, mean |engine - trainer| per token over every step: <= 0.02 (torch: same
  weights, bf16 kernels with and without a KV cache) and <= 0.05 (vllm: its own bf16 kernels);
- the weight push: after the last update, vLLM agrees with the trained weights better than the
  initial weights do (mean |difference| at most half the stale one), i.e. the push took effect;
- step-1 loss: both ~0 (ratio 1 and group advantages summing to zero; only TIS weights differ from
  1), so |loss_torch - loss_vllm| <= 0.05; every loss finite.

Without CUDA (or without vLLM, unless --skip-vllm) it stops at once with a message and exit 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, int]] = {
    "100m": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=2),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
LOGPROB_TOL = {"torch": 0.02, "vllm": 0.05}  # mean |engine - trainer| log-prob per token, bf16
LOSS_TOL = 0.05  # |step-1 loss (torch) - step-1 loss (vllm)|
PUSH_MARGIN = 0.5  # vLLM's disagreement after training must be <= this x the initial weights' disagreement


def digit_reward(completions: list[str], **_: Any) -> list[float]:
    """The share of digits in each completion: varies between a random model's samples, so GRPO has signal."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def build_model(out_dir: str | Path, size: str = "100m", seed: int = 0, dtype: str = "bfloat16") -> tuple[str, int]:
    """A randomly initialised Qwen2 causal LM with the shipped character tokenizer, saved to `out_dir`;
    returns (the directory, its parameter count)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from reasonloop.models.tiny import build_tokenizer

    tok = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         **SIZES[size])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return str(out_dir), sum(p.numel() for p in model.parameters())


def rl_args(model_dir: str, out_dir: str | Path, steps: int, device: str = "cuda", prompts: int = 16,
            group: int = 8, tokens: int = 128) -> list[str]:
    """The `reasonloop train` keys of every path (the engine is set apart)."""
    return [f"model.name={model_dir}", "model.dtype=bfloat16", f"model.device={device}", "task=arithmetic",
            "task_rewards=false", f"reward_funcs=[{__name__}:digit_reward]", f"steps={steps}",
            f"prompts_per_step={prompts}", f"group_size={group}", f"sampling.max_new_tokens={tokens}",
            "sampling.temperature=1.0",
            "tis_cap=2.0", "optim.lr=3e-4", "optim.warmup_steps=0", "eval_n=8", "eval_every=0", "save_every=0",
            "samples_every=0", "micro_batch_size=32", "seed=0", f"output_dir={out_dir}"]


class MeasuredEngine:
    """Wraps an engine: after each generation, the trainer's log-probs of the sampled tokens (current weights)."""

    def __init__(self, inner, trainer):
        self.inner, self.trainer = inner, trainer
        self.records: list[dict[str, float]] = []
        self.last = None

    def update_weights(self, model) -> None:
        self.inner.update_weights(model)

    def generate(self, prompts, n, sampling, generator=None):
        _sync()
        t0 = time.time()
        batch = self.inner.generate(prompts, n, sampling, generator)
        _sync()
        seconds = time.time() - t0
        from reasonloop.bench.timing import logprob_gap

        diff = logprob_gap(self.trainer.model, batch, sampling.temperature)
        self.records.append({**diff, "seconds": seconds, "tokens": float(batch.completion_mask.sum())})
        self.last = batch
        return batch


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_path(engine: str, model_dir: str, out: Path, steps: int, device: str = "cuda", prompts: int = 16,
             group: int = 8, tokens: int = 128, gen_prompts: int = 64, gen_tokens: int = 256) -> dict[str, Any]:
    """`steps` GRPO steps with `engine`; the per-step metrics, log-prob gaps and generation tokens/s."""
    import torch

    from reasonloop.bench.timing import logprob_gap
    from reasonloop.config import load_config
    from reasonloop.recipes import rl
    from reasonloop.rollout.engine import RolloutConfig, SamplingConfig, build_engine

    cfg = load_config(rl.Config, rl_args(model_dir, out / engine, steps, device, prompts, group, tokens))
    trainer = rl.Trainer(cfg)  # built with the torch engine; the engine under test replaces it
    initial = copy.deepcopy(trainer.model).eval() if engine == "vllm" else None
    t0 = time.time()
    inner = trainer.engine if engine == "torch" else build_engine(
        RolloutConfig(engine="vllm", gpu_memory_utilization=0.3, sleep_mode=True), trainer.model, trainer.tokenizer)
    startup = time.time() - t0
    measured = trainer.engine = MeasuredEngine(inner, trainer)
    steps_out = []
    for _ in range(steps):
        metrics, _ = trainer.step()
        steps_out.append({k: float(metrics[k]) for k in ("loss", "reward/mean", "grad_norm", "kl", "time/step",
                                                         "time/rollout") if k in metrics})
    result: dict[str, Any] = {"engine": engine, "startup_s": startup, "steps": steps_out, "gaps": measured.records}
    if initial is not None:  # did the pushes take effect? the trained weights must explain vLLM's samples
        measured.generate([trainer.render(e.prompt) for e in trainer.next_prompts(prompts)], group, cfg.sampling,
                          trainer.generator)
        result["after_training_gap"] = measured.records.pop()["mean_abs_gap"]
        result["stale_gap"] = logprob_gap(initial, measured.last, cfg.sampling.temperature)["mean_abs_gap"]
        del initial
    texts = [trainer.render(e.prompt) for e in trainer.next_prompts(gen_prompts)]
    _sync()
    t0 = time.time()
    batch = inner.generate(texts, 8, SamplingConfig(temperature=1.0, max_new_tokens=gen_tokens), trainer.generator)
    _sync()
    result["generate_tokens_per_s"] = float(batch.completion_mask.sum()) / (time.time() - t0)
    result["generate_shape"] = f"{gen_prompts} prompts x 8 samples x {gen_tokens} tokens"
    del trainer, inner, measured
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def checks(results: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """(name, passed, detail) for every check the results allow."""
    out = []
    for engine, r in results.items():
        losses = [s["loss"] for s in r["steps"]]
        out.append((f"{engine}: losses finite", all(math.isfinite(v) for v in losses), f"{losses}"))
        worst = max(g["mean_abs_gap"] for g in r["gaps"])
        out.append((f"{engine}: mean |engine - trainer| log-prob <= {LOGPROB_TOL[engine]}", worst <= LOGPROB_TOL[engine],
                    f"worst step {worst:.4f}, max token {max(g['max_abs_gap'] for g in r['gaps']):.4f}"))
        if "stale_gap" in r:
            ok = r["after_training_gap"] <= PUSH_MARGIN * r["stale_gap"]
            out.append((f"{engine}: weight push took effect", ok,
                        f"gap to trained weights {r['after_training_gap']:.4f} vs to initial weights "
                        f"{r['stale_gap']:.4f}"))
    if {"torch", "vllm"} <= set(results):
        a, b = results["torch"]["steps"][0]["loss"], results["vllm"]["steps"][0]["loss"]
        out.append((f"step-1 loss torch vs vllm within {LOSS_TOL}", abs(a - b) <= LOSS_TOL, f"{a:.5f} vs {b:.5f}"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="100m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="", help="results directory (default: a temporary one)")
    parser.add_argument("--skip-vllm", action="store_true", help="only the torch path")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: needs a CUDA GPU and none is visible (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); nothing was run", file=sys.stderr)
        return 2
    if not args.skip_vllm:
        try:
            import vllm
        except ImportError as exc:
            print(f"gpu_check: vLLM does not import ({exc}); pip install 'reasonloop[vllm]', or pass --skip-vllm",
                  file=sys.stderr)
            return 2
        print(f"gpu_check: vllm {vllm.__version__}")
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    model_dir, params = build_model(out / "model", args.size)
    print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}; model {params / 1e6:.1f}M "
          f"parameters (Qwen2, random, bf16) in {model_dir}", flush=True)
    results = {}
    for engine in ["torch"] + ([] if args.skip_vllm else ["vllm"]):
        t0 = time.time()
        results[engine] = run_path(engine, model_dir, out, args.steps)
        r = results[engine]
        print(f"gpu_check: {engine}: {time.time() - t0:.0f}s (engine start {r['startup_s']:.0f}s); losses "
              f"{[round(s['loss'], 5) for s in r['steps']]}; step s {[round(s['time/step'], 2) for s in r['steps']]}; "
              f"generation {r['generate_tokens_per_s']:.0f} tokens/s ({r['generate_shape']})", flush=True)
    results_checks = checks(results)
    for name, ok, detail in results_checks:
        print(f"gpu_check: {'PASS' if ok else 'FAIL'} {name}: {detail}")
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "params": params,
               "seconds": time.time() - t_start, "results": results,
               "checks": [{"name": n, "passed": ok, "detail": d} for n, ok, d in results_checks]}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    print(f"gpu_check: {sum(ok for _, ok, _ in results_checks)}/{len(results_checks)} checks passed in "
          f"{summary['seconds']:.0f}s; {out / 'gpu_check.json'}")
    return 0 if all(ok for _, ok, _ in results_checks) else 1


if __name__ == "__main__":
    sys.exit(main())
