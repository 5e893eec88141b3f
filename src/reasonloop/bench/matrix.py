"""The workload matrix (`reasonloop bench matrix=true`): the GRPO step of reasonloop and of TRL's
GRPOTrainer, and the sampler against transformers' `generate` and against its own matmul bound, for
random Llama-shaped models of ~2M, ~20M and ~100M parameters x forced completion lengths 64, 256, 1024.

Lengths are forced in both frameworks the same way: EOS is masked for the first T tokens
(`TorchSampler.min_new_tokens`, transformers' `min_new_tokens` through TRL's `generation_kwargs`), so
every completion is exactly T tokens and both sides do the same work per sample.

Each cell runs in a fresh process (`only=cell`); inside it the two trainers step in turn (each TRL
step followed by one reasonloop step on the same prompts), so a change in the machine's load hits both.
Peak RSS per framework comes from separate fresh processes that load one framework and take one step
(`only=memory`), since both trainers share the timing process. The batch shrinks as cells grow, to
keep the whole matrix to minutes on a CPU (`CELLS`); a cell's figures are per step at its own batch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from reasonloop.bench.timing import gemm_replay_seconds, peak_rss_mb, reset_peak_rss, rss_mb, sync

if TYPE_CHECKING:
    from reasonloop.bench import Config

SIZE_NAMES = {"tiny": "2M", "small": "20M", "base": "100M"}  # model preset -> the matrix's label

# (preset, completion length) -> (prompts, group size, warmup steps, timed steps, sampler-vs-generate repeats):
# fewer rows as the cells grow, so that the whole matrix runs in ~25 minutes on one CPU thread; the longest
# cells are one prompt x 2 samples (the 100M x 1024 one without a warm-up step)
CELLS = {
    ("tiny", 64): (4, 4, 1, 2, 3), ("tiny", 256): (2, 4, 1, 1, 2), ("tiny", 1024): (1, 2, 1, 1, 2),
    ("small", 64): (2, 4, 1, 1, 2), ("small", 256): (1, 4, 1, 1, 2), ("small", 1024): (1, 2, 1, 1, 1),
    ("base", 64): (1, 4, 1, 1, 2), ("base", 256): (1, 2, 1, 1, 1), ("base", 1024): (1, 2, 0, 1, 1),
}


def cell_config(cfg: Config, size: str, length: int) -> Config:
    """The bench config of one cell: its model, forced length, batch (`matrix_batch`, else the table's) and step
    counts."""
    prompts, group, warmup, steps, _ = CELLS.get((size, length), (2, 4, 1, 1, 2))
    if cfg.matrix_batch:
        prompts, group = cfg.matrix_batch
    return dataclasses.replace(cfg, model=size, max_new_tokens=length, prompts=prompts, group_size=group,
                               warmup=warmup, steps=steps, micro_batch_size=min(32, prompts * group))


def cell_model(cfg: Config) -> str:
    from reasonloop.bench.grpo import prepare_model

    return prepare_model(cfg.model, Path(tempfile.gettempdir()) / "reasonloop-bench-models", cfg.seed,
                         max_positions=cfg.max_new_tokens + 128)


def _forced_sampler(model, tok, cfg: Config):
    from reasonloop.rollout.engine import build_engine

    sampler = build_engine(cfg.rollout, model, tok)
    sampler.min_new_tokens = cfg.max_new_tokens
    return sampler


def sampler_vs_generate(cfg: Config, model_dir: str, reps: int) -> dict:
    """Tokens/s of the sampler, of `model.generate` and of the sampler's matrix multiplies alone, all
    at exactly `max_new_tokens` tokens per row; runs interleaved."""
    from reasonloop.models.loading import ModelConfig, load_model, load_tokenizer, render_prompt
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.tasks import make_task

    tok = load_tokenizer(model_dir)
    model = load_model(ModelConfig(name=model_dir)).eval()
    exs = make_task("arithmetic").examples("train", cfg.prompts, seed=cfg.seed + 1)
    prompts = [render_prompt(tok, e.prompt) for e in exs]
    T, G = cfg.max_new_tokens, cfg.group_size
    sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=T)
    sampler = _forced_sampler(model, tok, cfg)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")

    def ours(seed):
        b = sampler.generate(prompts, G, sampling, torch.Generator().manual_seed(seed))
        return int(b.completion_mask.sum())

    def theirs(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=T, min_new_tokens=T, num_return_sequences=G,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return int(out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1]))

    rate: dict[str, list[float]] = {"sampler": [], "hf_generate": []}
    ours(0)  # warm-up: the compiled step's load, oneDNN's kernels for these shapes
    for r in range(reps):
        for name, fn in (("sampler", ours), ("hf_generate", theirs)):
            sync()
            t = time.perf_counter()
            n = fn(r + 1)
            sync()
            rate[name].append(n / (time.perf_counter() - t))
    tokens = len(prompts) * G * T
    gemm_s = gemm_replay_seconds(lambda: ours(reps + 1), 2, model.device, distinct=model.config.num_hidden_layers)
    sampler_tps = statistics.median(rate["sampler"])
    return {"tokens": tokens, "sampler_tokens_per_s": sampler_tps,
            "generate_tokens_per_s": statistics.median(rate["hf_generate"]),
            "speedup_vs_generate": statistics.median(a / b for a, b in zip(rate["sampler"], rate["hf_generate"])),
            "matmul_bound_tokens_per_s": tokens / gemm_s, "share_of_matmul_bound": sampler_tps * gemm_s / tokens}


def grpo_pair(cfg: Config, model_dir: str, out: Path) -> dict:
    """reasonloop's and TRL's GRPO steps in turn on the same prompts, forced lengths; per-step medians,
    where each side's time goes, and each side's peak RSS during its own steps (both models resident)."""
    from transformers import TrainerCallback

    from reasonloop.bench.grpo import rl_config, timed_trainer, trl_trainer
    from reasonloop.recipes.rl import Trainer

    drawer = Trainer(rl_config(cfg, model_dir, out / "prompts"))
    examples = drawer.next_prompts((cfg.warmup + cfg.steps) * cfg.prompts)
    drawer.run.close()
    del drawer
    ours, timed = timed_trainer(rl_config(cfg, model_dir, out / "reasonloop"))
    timed.inner.min_new_tokens = cfg.max_new_tokens
    ours_rows: list[dict] = []
    peaks = {"reasonloop": 0.0, "trl": 0.0}

    class Paired(TrainerCallback):
        def __init__(self):
            self.rows: list[dict] = []

        def on_step_begin(self, *a, **k):
            reset_peak_rss()
            self.before = dict(parts)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            wall = time.perf_counter() - self.t
            peaks["trl"] = max(peaks["trl"], peak_rss_mb())
            self.rows.append({"step_s": wall, "generation_s": parts["generation_s"] - self.before["generation_s"],
                              "nograd_logprobs_s": parts["nograd_logprobs_s"] - self.before["nograd_logprobs_s"]})
            timed.reset()
            reset_peak_rss()
            t = time.perf_counter()
            metrics, data = ours.step()
            sync()
            peaks["reasonloop"] = max(peaks["reasonloop"], peak_rss_mb())
            ours_rows.append({"step_s": time.perf_counter() - t, "generation_s": timed.seconds,
                              "nograd_logprobs_s": metrics["time/logprobs"], "update_s": metrics["time/train"],
                              "completion_tokens": int(data.tokens.completion_mask.sum())})

    paired = Paired()
    trainer, parts = trl_trainer(cfg, model_dir, out / "trl", examples, ours.task.rewards(),
                                 cfg.warmup + cfg.steps, [paired], min_new_tokens=cfg.max_new_tokens)
    trainer.train()
    ours.run.close()
    mine, theirs = ours_rows[cfg.warmup:], paired.rows[cfg.warmup:]
    med = lambda rows: {k: statistics.median(r[k] for r in rows) for k in rows[0]}  # noqa: E731
    res = {"reasonloop": med(mine), "trl": med(theirs)}
    res["trl"]["rest_s"] = res["trl"]["step_s"] - res["trl"]["generation_s"] - res["trl"]["nograd_logprobs_s"]
    res["speedup_vs_trl"] = statistics.median(t["step_s"] / o["step_s"] for t, o in zip(theirs, mine))
    res["reasonloop"]["peak_rss_during_steps_mb"] = peaks["reasonloop"]
    res["trl"]["peak_rss_during_steps_mb"] = peaks["trl"]
    return res


def memory_one_side(cfg: Config, model_dir: str, out: Path, side: str) -> dict:
    """Peak RSS of a fresh process that loads one framework's trainer and takes one forced-length step."""
    from reasonloop.bench.grpo import rl_config, timed_trainer, trl_trainer
    from reasonloop.tasks import make_task

    one = dataclasses.replace(cfg, warmup=0, steps=1)
    before = rss_mb()
    if side == "reasonloop":
        trainer, timed = timed_trainer(rl_config(one, model_dir, out / "reasonloop"))
        timed.inner.min_new_tokens = cfg.max_new_tokens
        trainer.step()
        trainer.run.close()
    else:
        task = make_task("arithmetic")
        examples = task.examples("train", cfg.prompts, seed=cfg.seed)
        trainer, _ = trl_trainer(one, model_dir, out / "trl", examples, task.rewards(), 1, [],
                                 min_new_tokens=cfg.max_new_tokens)
        trainer.train()
    return {"side": side, "peak_rss_mb": peak_rss_mb(), "rss_before_trainer_mb": before}


def run_cell(cfg: Config, out: Path) -> dict:
    """One cell in this process: `only=cell` times both sides, `only=memory` measures `matrix_side`'s RSS."""
    model_dir = cell_model(cfg)
    if cfg.only == "memory":
        return memory_one_side(cfg, model_dir, out, cfg.matrix_side)
    reps = CELLS.get((cfg.model, cfg.max_new_tokens), (0, 0, 0, 0, 2))[4]
    return {"sampler": sampler_vs_generate(cfg, model_dir, reps), "grpo": grpo_pair(cfg, model_dir, out)}


def _subprocess(cfg: Config, out: Path, only: str, side: str = "both") -> dict:
    from reasonloop.bench.grpo import _START_ENV, workload_keys

    keys = {**workload_keys(cfg), "matrix_side": side}
    name = f"{only}-{cfg.model}-T{cfg.max_new_tokens}-{side}"
    argv = [f"{k}={v}" for k, v in keys.items()] + [f"only={only}", f"output_dir={out / name}"]
    proc = subprocess.run([sys.executable, "-m", "reasonloop.cli", "bench", *argv], capture_output=True, text=True,
                          check=False, env={**_START_ENV, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(cfg: Config, out: Path) -> dict:
    """Every cell of `matrix_sizes` x `matrix_lengths`, each in fresh processes; printed as they finish."""
    table: dict[str, dict] = {}
    for size in cfg.matrix_sizes:
        for length in cfg.matrix_lengths:
            cell = cell_config(cfg, size, length)
            key = f"{SIZE_NAMES.get(size, size)} x {length}"
            row: dict = {"prompts": cell.prompts, "group_size": cell.group_size, "warmup": cell.warmup,
                         "steps": cell.steps}
            if cfg.matrix_part in ("all", "time"):
                t = time.perf_counter()
                row.update(_subprocess(cell, out, "cell"))
                row["wall_s"] = time.perf_counter() - t
                _print_time(key, row)
            if cfg.matrix_part in ("all", "memory"):
                row["memory"] = {side: _subprocess(cell, out, "memory", side) for side in ("reasonloop", "trl")}
                print(f"matrix {key}: peak RSS " + ", ".join(
                    f"{s} {m.get('peak_rss_mb', float('nan')):.0f} MB" for s, m in row["memory"].items()), flush=True)
            table[key] = row
    return table


def _print_time(key: str, row: dict) -> None:
    if "error" in row:
        print(f"matrix {key}: FAILED {row['error'][-300:]}", flush=True)
        return
    s, g = row["sampler"], row["grpo"]
    ours, trl = g["reasonloop"], g["trl"]
    print(f"matrix {key} ({row['prompts']}x{row['group_size']}): step reasonloop {ours['step_s']:.2f}s (gen "
          f"{ours['generation_s']:.2f} + no-grad lp {ours['nograd_logprobs_s']:.2f} + update {ours['update_s']:.2f}) "
          f"vs TRL {trl['step_s']:.2f}s (gen {trl['generation_s']:.2f} + no-grad lp {trl['nograd_logprobs_s']:.2f} + "
          f"rest {trl['rest_s']:.2f}) = {g['speedup_vs_trl']:.2f}x; sampler {s['sampler_tokens_per_s']:.0f} tok/s = "
          f"{s['speedup_vs_generate']:.2f}x generate, {s['share_of_matmul_bound']:.0%} of its matmul bound "
          f"({s['matmul_bound_tokens_per_s']:.0f} tok/s)", flush=True)
