"""Benchmark a fixed GRPO workload, and optionally TRL's GRPOTrainer on the same one, side by side.

`reasonloop bench [key=value ...]` (or `python -m reasonloop.recipes.bench --vs trl ...`) runs, in one
process and with `threads` torch threads:

1. matmul     the machine's fp32 matmul rate (a large square matmul, best of several), the yardstick
              for model FLOP utilisation (MFU);
2. grpo       `steps` GRPO steps of `recipes/rl.Trainer` (arithmetic task, `prompts` x `group_size`
              samples, `max_new_tokens`): median seconds per step, the split generation / reward /
              log-probs / update, generation and training tokens/s, peak RSS, and the time of the
              step's matrix multiplies alone (`gemm_replay_seconds`): a floor on the step time;
3. generate   the sampler alone against transformers' `model.generate` on the same batch (same
              sampling settings, num_return_sequences=G), runs interleaved: tokens/s of each, the
              median of the paired ratios, and its ceiling (the ratio if everything but the
              sampler's matrix multiplies cost nothing);
4. train      forward+backward of the "small" (~20M parameter) model at sequence length `train_seq`:
              tokens/s and MFU = (6 * params + 12 * layers * hidden * seq) * tokens/s / matmul rate;
5. trl        (vs=trl) TRL's GRPOTrainer with the same model, prompts (same order), reward functions
              and weights, G, completion length, batch, lr, beta, temperature, one iteration, no vLLM,
              CPU; prints the per-step ratio and its ceiling (TRL's step / our matmuls alone);
6. memory     (memory=true) peak RSS of the GRPO step at `prompts` and 2x`prompts` prompts, each in a
              fresh subprocess, same micro-batch size: micro-batching keeps it flat;
7. scaling    (scaling=true) step time for G in {4, 8, 16} and completion lengths {32, 64, 128};
8. ablation   (ablation=true) four trainers stepping in turn in one process: baseline, + static KV
              cache sampler, + shared-prompt training forward, + length buckets.

Results go to `<output_dir>/bench.json` (+ `profile_*.txt` torch.profiler tables with profile=true).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from reasonloop.config import require, require_choice

_START_ENV = dict(os.environ)  # subprocesses get the environment as it was before TRL/accelerate ran


@dataclass
class Config:
    model: str = "embedded"
    """'embedded' (the shipped model), nano|tiny|small (random init, built locally) or a model directory."""
    prompts: int = 8
    """B: prompts per GRPO step."""
    group_size: int = 8
    """G: samples per prompt."""
    max_new_tokens: int = 64
    """Completion length limit."""
    steps: int = 5
    """Timed GRPO steps (the median is reported)."""
    warmup: int = 1
    """Untimed steps first (allocator warm-up, lazy imports)."""
    micro_batch_size: int = 32
    """Rows per forward/backward in the update (TRL's per_device_train_batch_size)."""
    lr: float = 2e-4
    """Learning rate (constant; both trainers)."""
    beta: float = 0.04
    """KL-to-reference coefficient (both trainers)."""
    temperature: float = 1.0
    """Sampling temperature (both trainers)."""
    threads: int = 1
    """torch intra-op threads (1 is the robust choice on a shared/loaded machine; use the free cores)."""
    interop_threads: int = 1
    """torch inter-op threads."""
    vs: str = ""
    """'' or 'trl': also run TRL's GRPOTrainer on the same workload and print the ratios."""
    generate: bool = True
    """Time the sampler against transformers' model.generate."""
    train: bool = True
    """Time forward+backward of the ~20M-parameter 'small' model and report MFU."""
    train_seq: int = 256
    """Sequence length of the training benchmark."""
    train_batch: int = 8
    """Rows per forward/backward in the training benchmark."""
    memory: bool = False
    """Peak RSS at `prompts` and 2x`prompts` prompts per step (fresh subprocesses)."""
    scaling: bool = False
    """Step-time table over G in {4, 8, 16} and completion lengths {32, 64, 128} (subprocesses)."""
    ablation: bool = False
    """Interleave steps of four trainers in one process (baseline, +static cache, +shared prompts,
    +length buckets) so that load changes hit all of them alike; prints what each optimisation buys."""
    profile: bool = False
    """Save torch.profiler tables of one GRPO step and one training step to the output directory."""
    static_cache: bool = True
    """Ablation switch: false makes the sampler use transformers' forward with a DynamicCache."""
    fused_decode: bool = True
    """Ablation switch: false makes the static-cache sampler decode with torch ops instead of the
    compiled CPU decode step (rollout/fused_decode.cpp)."""
    share_prompts: bool = True
    """Ablation switch: false makes training forwards re-encode each group's prompt G times."""
    bucket_lengths: bool = True
    """Ablation switch: false makes training forwards compute every row to the longest completion."""
    only: str = ""
    """Internal: 'grpo' runs just the GRPO timing and prints JSON (used by the memory/scaling subprocesses)."""
    output_dir: str = ""
    """Where bench.json goes; empty means runs/bench-<timestamp>."""
    seed: int = 0
    """Seed for prompts, sampling and initialisation."""

    def __post_init__(self):
        require_choice("vs", self.vs, ["", "trl"])
        require_choice("only", self.only, ["", "grpo"])
        require(self.prompts > 0 and self.group_size >= 2, "need prompts > 0 and group_size >= 2")
        require(self.steps > 0 and self.warmup >= 0, "need steps > 0 and warmup >= 0")
        require(self.threads > 0 and self.interop_threads > 0, "threads must be > 0")


# ---------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM from /proc (reset by exec; `ru_maxrss` is not: a subprocess would inherit the peak of
    the parent it was forked from). Elsewhere `ru_maxrss` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cuda_peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """Best-of-`reps` fp32 rate of an n x n x n matmul on this device (the MFU denominator)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync()
        t = time.perf_counter()
        a @ b
        _sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def prepare_model(name: str, workdir: Path, seed: int) -> str:
    """A loadable model directory: the embedded asset, a directory, or a random tiny preset saved now."""
    from reasonloop.models.loading import resolve_model_path

    if name not in ("nano", "tiny", "small"):
        path = resolve_model_path(name)
        if not Path(path, "config.json").exists():
            raise SystemExit(f"bench: no model at {path} (use model=tiny for a random one)")
        return path
    from transformers import LlamaForCausalLM

    from reasonloop.models.tiny import build_config, build_tokenizer

    path = workdir / f"random-{name}-seed{seed}"
    if not (path / "config.json").exists():
        tok = build_tokenizer()
        torch.manual_seed(seed)
        LlamaForCausalLM(build_config(tok, name)).save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return str(path)


def rl_config(cfg: Config, model_dir: str, out: Path):
    from reasonloop.models.loading import ModelConfig
    from reasonloop.recipes.rl import Config as RLConfig
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.train.optim import OptimConfig

    return RLConfig(
        model=ModelConfig(name=model_dir), steps=cfg.warmup + cfg.steps, prompts_per_step=cfg.prompts,
        group_size=cfg.group_size, sampling=SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens),
        micro_batch_size=cfg.micro_batch_size, kl_coef=cfg.beta, epochs=1, eval_n=8, save_every=0, samples_every=0,
        optim=OptimConfig(lr=cfg.lr, warmup_steps=0, min_lr_ratio=1.0), output_dir=str(out), resume="never",
        seed=cfg.seed, threads=cfg.threads,
    )


class _Timed:
    """Wraps the rollout engine to time `generate` (the rest of `rollout` is reward + assembly)."""

    def __init__(self, engine):
        self.engine, self.seconds, self.tokens = engine, 0.0, 0

    def generate(self, *args, **kwargs):
        t = time.perf_counter()
        batch = self.engine.generate(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        self.tokens += int(batch.completion_mask.sum())
        return batch

    def update_weights(self, model) -> None:
        self.engine.update_weights(model)


def bench_grpo(cfg: Config, model_dir: str, out: Path, ceiling: bool = True) -> dict:
    """Median per-step figures of reasonloop's GRPO step (and, with `ceiling`, its matmuls alone)."""
    import functools

    from reasonloop.recipes import rl
    from reasonloop.recipes.rl import Trainer
    from reasonloop.models.forward import policy_forward

    rl.policy_forward = functools.partial(policy_forward, share_prompts=cfg.share_prompts,  # ablation switches
                                          bucket_lengths=cfg.bucket_lengths)
    trainer = Trainer(rl_config(cfg, model_dir, out / "reasonloop-run"))
    trainer.engine.static_cache, trainer.engine.fused_decode = cfg.static_cache, cfg.fused_decode
    timed = _Timed(trainer.engine)
    trainer.engine = timed
    rows: list[dict] = []
    for i in range(cfg.warmup + cfg.steps):
        timed.seconds, timed.tokens = 0.0, 0
        t = time.perf_counter()
        metrics, data = trainer.step()
        wall = time.perf_counter() - t
        if i < cfg.warmup:
            continue
        mask = data.tokens.completion_mask
        seq_tokens = int(mask.sum() + data.tokens.prompt_mask.sum())
        rows.append({
            "step_s": wall, "generation_s": timed.seconds, "reward_s": metrics["time/rollout"] - timed.seconds,
            "logprobs_s": metrics["time/logprobs"], "update_s": metrics["time/train"],
            "completion_tokens": int(mask.sum()), "sequence_tokens": seq_tokens, "reward": metrics["reward/mean"],
        })
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    train_s = med["logprobs_s"] + med["update_s"]
    result = {
        **med, "min_step_s": min(r["step_s"] for r in rows), "steps": rows,
        "generation_tokens_per_s": med["completion_tokens"] / med["generation_s"],
        "training_tokens_per_s": med["sequence_tokens"] / train_s,
        "peak_rss_mb": peak_rss_mb(), "cuda_peak_mb": cuda_peak_mb(),
    }
    if ceiling:  # the step's matmuls (sampling, log-probs, forward and backward) replayed alone: a floor on its time
        result["gemm_only_s"] = gemm_replay_seconds(trainer.step, 3, next(trainer.model.parameters()).device)
    if cfg.profile:
        from torch.profiler import profile

        with profile() as prof:
            trainer.step()
        (out / "profile_grpo_step.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    trainer.run.close()
    return result


ABLATIONS = {  # cumulative: each row adds one optimisation to the one above
    "baseline (DynamicCache sampler, plain forward)":
        {"static_cache": False, "fused_decode": False, "share_prompts": False, "bucket_lengths": False},
    "+ static KV cache sampler": {"static_cache": True, "fused_decode": False, "share_prompts": False, "bucket_lengths": False},
    "+ shared-prompt training forward": {"static_cache": True, "fused_decode": False, "share_prompts": True, "bucket_lengths": False},
    "+ length buckets": {"static_cache": True, "fused_decode": False, "share_prompts": True, "bucket_lengths": True},
    "+ compiled decode step": {"static_cache": True, "fused_decode": True, "share_prompts": True, "bucket_lengths": True},
}


def bench_ablation(cfg: Config, model_dir: str, out: Path) -> dict:
    """Median step figures of each ABLATIONS row, their steps interleaved round-robin in this process."""
    import functools

    from reasonloop.recipes import rl
    from reasonloop.models.forward import policy_forward

    trainers = {}
    for i, (name, opts) in enumerate(ABLATIONS.items()):
        trainer = rl.Trainer(rl_config(cfg, model_dir, out / f"ablation-{i}"))
        trainer.engine.static_cache, trainer.engine.fused_decode = opts["static_cache"], opts["fused_decode"]
        trainer.engine = _Timed(trainer.engine)
        trainers[name] = (trainer, functools.partial(policy_forward, share_prompts=opts["share_prompts"],
                                                     bucket_lengths=opts["bucket_lengths"]))
    rows: dict[str, list[dict]] = {name: [] for name in ABLATIONS}
    for i in range(cfg.warmup + cfg.steps):
        for name, (trainer, forward) in trainers.items():
            rl.policy_forward = forward
            trainer.engine.seconds = 0.0
            t = time.perf_counter()
            metrics, _ = trainer.step()
            wall = time.perf_counter() - t
            if i >= cfg.warmup:
                rows[name].append({"step_s": wall, "generation_s": trainer.engine.seconds,
                                   "logprobs_s": metrics["time/logprobs"], "update_s": metrics["time/train"]})
    rl.policy_forward = policy_forward
    for trainer, _ in trainers.values():
        trainer.run.close()
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()}


def bench_generate(cfg: Config, model_dir: str) -> dict:
    """The sampler alone vs `model.generate` on the same prompts, G and sampling settings."""
    from reasonloop.tasks import make_task
    from reasonloop.models.loading import (
        ModelConfig,
        load_model,
        load_tokenizer,
        render_prompt,
    )
    from reasonloop.rollout.engine import SamplingConfig
    from reasonloop.rollout.sampler import TorchSampler

    tok = load_tokenizer(model_dir)
    model = load_model(ModelConfig(name=model_dir)).eval()
    exs = make_task("arithmetic").examples("train", cfg.prompts, seed=cfg.seed + 1)
    prompts = [render_prompt(tok, e.prompt) for e in exs]
    sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    sampler = TorchSampler(model, tok, static_cache=cfg.static_cache, fused_decode=cfg.fused_decode)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left").to(model.device)
    reps = max(9, cfg.steps)  # paired runs; their median ratio is noisy on a shared 2-core machine

    def ours(seed):
        b = sampler.generate(prompts, cfg.group_size, sampling, torch.Generator().manual_seed(seed))
        return int(b.completion_mask.sum())

    def theirs(seed):
        torch.manual_seed(seed)
        out = model.generate(**enc, do_sample=cfg.temperature > 0, temperature=cfg.temperature or None, top_k=0,
                             top_p=1.0, max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.group_size,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        finished = (new == tok.eos_token_id).cumsum(-1)
        return int(((finished == 0) | ((finished == 1) & (new == tok.eos_token_id))).sum())  # tokens up to EOS

    runs: dict[str, dict[str, list]] = {"sampler": {"s": [], "tokens": []}, "hf_generate": {"s": [], "tokens": []}}
    ours(0), theirs(0)
    for r in range(reps):  # interleaved, so a change in the machine's load hits both alike
        for name, fn in (("sampler", ours), ("hf_generate", theirs)):
            _sync()
            t = time.perf_counter()
            runs[name]["tokens"].append(fn(r + 1))
            _sync()
            runs[name]["s"].append(time.perf_counter() - t)
    res: dict = {name: {"median_s": statistics.median(r["s"]), "tokens": statistics.median(r["tokens"]),
                        "tokens_per_s": sum(r["tokens"]) / sum(r["s"])} for name, r in runs.items()}
    rate = {name: [k / s for k, s in zip(r["tokens"], r["s"])] for name, r in runs.items()}
    res["speedup_tokens_per_s"] = statistics.median(a / b for a, b in zip(rate["sampler"], rate["hf_generate"]))
    gemm_s = gemm_replay_seconds(lambda: ours(reps + 1), reps, model.device)
    res["sampler_gemm_only_s"] = gemm_s
    res["sampler_gemm_share"] = gemm_s / res["sampler"]["median_s"]
    res["ceiling_vs_generate"] = res["speedup_tokens_per_s"] / res["sampler_gemm_share"]
    return res


GEMM_OPS = {"aten::mm": torch.mm, "aten::bmm": torch.bmm, "aten::addmm": torch.addmm}
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"  # the compiled decode step's projections (prepacked weights)


def recorded_gemms(fn) -> list[tuple[str, list[list[int]]]]:
    """(op name, input shapes) of every matrix multiply `fn()` makes, in order (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return [(e.name, [list(shape) for shape in e.input_shapes if shape]) for e in prof.events()
            if e.name in GEMM_OPS or e.name == ONEDNN_LINEAR]


def _replay(name: str, shapes: list[list[int]], device: torch.device):
    """A call of op `name` on random tensors of `shapes`; oneDNN linears get a weight prepacked as the
    decode step's are, so the replay costs what the original call did."""
    if name != ONEDNN_LINEAR:
        op, args = GEMM_OPS[name], [torch.randn(*shape, device=device) for shape in shapes]
        return lambda: op(*args)
    mats = [torch.randn(*shape) for shape in shapes if len(shape) == 2]  # X, [residual,] W; a bias is 1-D
    bias = next((torch.randn(*shape) for shape in shapes if len(shape) == 1), None)
    x, w = mats[0], torch.ops.mkldnn._reorder_linear_weight(mats[-1], mats[0].shape[0])
    if len(mats) == 3:
        return lambda: torch.ops.mkldnn._linear_pointwise.binary(x, mats[1], w, bias, "add")
    return lambda: torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


def gemm_replay_seconds(fn, reps: int, device: torch.device) -> float:
    """Median time of `fn`'s matrix multiplies alone, replayed back to back on random tensors of the
    recorded shapes. Time outside them is all a faster implementation could still remove, so
    `call time / this` bounds its speed-up."""
    calls = [_replay(name, shapes, device) for name, shapes in recorded_gemms(fn)]
    times = []
    for _ in range(reps + 1):
        _sync()
        t = time.perf_counter()
        for call in calls:
            call()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def bench_train(cfg: Config, gflops: float, out: Path) -> dict:
    """Forward+backward of the 'small' preset at `train_seq` tokens per row, with `policy_forward`."""
    from transformers import LlamaForCausalLM

    from reasonloop.models.tiny import build_config, build_tokenizer
    from reasonloop.models.forward import TokenBatch, policy_forward

    tok = build_tokenizer()
    torch.manual_seed(cfg.seed)
    conf = build_config(tok, "small", max_positions=max(256, cfg.train_seq))
    model = LlamaForCausalLM(conf).train()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    params = sum(p.numel() for p in model.parameters())  # tied: the lm_head matmul counts, the lookup is free
    B, S, P = cfg.train_batch, cfg.train_seq, 32
    ids = torch.randint(10, len(tok), (B, S), device=device)
    ones = torch.ones(B, S, dtype=torch.long, device=device)
    batch = TokenBatch(ids[:, :P], ones[:, :P], ids[:, P:], ones[:, P:])

    def one():
        fwd = policy_forward(model, batch, 1.0, with_entropy=True)
        (fwd.logprobs.mean() + 0.0 * fwd.entropy.mean()).backward()
        model.zero_grad(set_to_none=True)

    one()
    times = []
    for _ in range(max(3, cfg.steps)):
        _sync()
        t = time.perf_counter()
        one()
        _sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    tokens_per_s = B * S / med
    flops_per_token = 6 * params + 12 * conf.num_hidden_layers * conf.hidden_size * S
    achieved = flops_per_token * tokens_per_s / 1e9
    if cfg.profile:
        from torch.profiler import profile

        with profile() as prof:
            one()
        (out / "profile_train_step.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    return {"params": params, "batch": B, "seq": S, "median_s": med, "tokens_per_s": tokens_per_s,
            "achieved_gflops": achieved, "mfu": achieved / gflops}


def bench_trl(cfg: Config, model_dir: str, out: Path) -> dict:
    """TRL's GRPOTrainer on the same model, prompts (in the same order), rewards and hyper-parameters."""
    try:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as exc:
        raise SystemExit(f"bench vs=trl needs TRL (pip install trl): {exc}")
    from reasonloop.models.loading import load_tokenizer, render_prompt
    from reasonloop.recipes.rl import Trainer

    # the prompts reasonloop's trainer draws, in its order (same seed, same pool)
    ours = Trainer(rl_config(cfg, model_dir, out / "reasonloop-paired"))
    examples = ours.next_prompts((cfg.warmup + cfg.steps) * cfg.prompts)
    ours.state["position"] = 0  # it replays the same prompts, one step after each TRL step
    ours.engine.static_cache, ours.engine.fused_decode = cfg.static_cache, cfg.fused_decode
    specs = ours.task.rewards()
    tok = load_tokenizer(model_dir)
    rows = [{"prompt": render_prompt(tok, e.prompt), "answer": e.answer, **e.meta} for e in examples]
    columns = ["answer", *{k for e in examples for k in e.meta}]

    def wrap(spec):
        def fn(prompts, completions, **kw):
            return spec.fn(prompts=prompts, completions=completions, **{k: kw[k] for k in columns if k in kw})

        fn.__name__ = spec.name
        return fn

    args = GRPOConfig(
        output_dir=str(out / "trl-run"), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.prompts * cfg.group_size // cfg.micro_batch_size,
        num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens, learning_rate=cfg.lr,
        lr_scheduler_type="constant", warmup_steps=0, beta=cfg.beta, temperature=cfg.temperature, top_k=0,
        top_p=1.0, num_iterations=1, loss_type="grpo", scale_rewards="group", epsilon=0.2, use_vllm=False,
        use_cpu=not torch.cuda.is_available(), bf16=False, max_steps=cfg.warmup + cfg.steps, logging_steps=1,
        save_strategy="no", report_to="none", shuffle_dataset=False, seed=cfg.seed, dataloader_num_workers=0,
        reward_weights=[s.weight for s in specs], max_grad_norm=1.0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, disable_tqdm=True,
    )
    require(cfg.prompts * cfg.group_size % cfg.micro_batch_size == 0,
            "vs=trl needs prompts*group_size divisible by micro_batch_size")

    class StepTimer(TrainerCallback):
        """Times each TRL step, then runs one reasonloop step on the same prompts: paired under one load."""

        def __init__(self):
            self.times: list[float] = []
            self.ours: list[float] = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync()
            self.times.append(time.perf_counter() - self.t)
            t = time.perf_counter()
            ours.step()
            _sync()
            self.ours.append(time.perf_counter() - t)

    timer = StepTimer()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=[wrap(s) for s in specs], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer])
    generated = {"s": 0.0}
    inner_generate = trainer.model.generate

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return inner_generate(*a, **k)
        finally:
            generated["s"] += time.perf_counter() - t

    trainer.model.generate = timed_generate
    torch.set_num_threads(cfg.threads)  # TrainingArguments may reset threads; keep the comparison fair
    trainer.train()
    timed, paired = timer.times[cfg.warmup:], timer.ours[cfg.warmup:]
    ours.run.close()
    return {"median_step_s": statistics.median(timed), "min_step_s": min(timed), "steps_s": timed,
            "paired_reasonloop_steps_s": paired,
            "paired_speedup_median": statistics.median(t / o for t, o in zip(timed, paired)),
            "paired_speedup_of_minima": min(timed) / min(paired),
            "generation_s_per_step": generated["s"] / max(1, len(timer.times)), "peak_rss_mb": peak_rss_mb(),
            "trl_version": __import__("trl").__version__}


def _subprocess_grpo(cfg: Config, out: Path, **overrides) -> dict:
    """One GRPO timing in a fresh process (so peak RSS belongs to that batch size alone)."""
    keys = {"model": cfg.model, "prompts": cfg.prompts, "group_size": cfg.group_size,
            "max_new_tokens": cfg.max_new_tokens, "steps": cfg.steps, "warmup": cfg.warmup,
            "micro_batch_size": cfg.micro_batch_size, "threads": cfg.threads, "seed": cfg.seed,
            "static_cache": cfg.static_cache, "fused_decode": cfg.fused_decode, "share_prompts": cfg.share_prompts,
            "bucket_lengths": cfg.bucket_lengths, **overrides}
    name = "-".join(f"{k}{v}" for k, v in overrides.items())
    argv = [f"{k}={v}" for k, v in keys.items()] + ["only=grpo", f"output_dir={out / ('sub-' + name)}"]
    proc = subprocess.run([sys.executable, "-m", "reasonloop.recipes.bench", *argv], capture_output=True, text=True,
                          check=False,
                          env={**_START_ENV, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode != 0:
        raise RuntimeError(f"bench subprocess failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------


def run(cfg: Config) -> dict:
    from reasonloop.train.run import set_threads

    set_threads(cfg.threads)  # the same CPU settings as every recipe (TRL runs in this process too)
    try:
        torch.set_num_interop_threads(cfg.interop_threads)
    except RuntimeError:  # already set in this process
        pass
    out = Path(cfg.output_dir or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(cfg.model, Path(tempfile.gettempdir()) / "reasonloop-bench-models", cfg.seed)
    if cfg.only == "grpo":
        res = bench_grpo(cfg, model_dir, out, ceiling=False)  # memory/scaling rows: their own process
        res.pop("steps")
        print(json.dumps(res))
        return res

    results: dict = {"config": asdict(cfg), "model_dir": model_dir, "torch": torch.__version__,
                     "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": cfg.threads}
    results["matmul_gflops"] = matmul_gflops()
    print(f"fp32 matmul (1024^3, best of 10): {results['matmul_gflops']:.1f} GFLOP/s on {cfg.threads} thread(s)")
    g = results["grpo"] = bench_grpo(cfg, model_dir, out)
    print(f"reasonloop GRPO step ({cfg.prompts}x{cfg.group_size}, {cfg.max_new_tokens} new tokens): "
          f"median {g['step_s']:.3f}s (its matmuls alone {g['gemm_only_s']:.3f}s) = generation {g['generation_s']:.3f} + reward {g['reward_s']:.3f} + "
          f"log-probs {g['logprobs_s']:.3f} + update {g['update_s']:.3f}; generation {g['generation_tokens_per_s']:.0f} "
          f"tok/s, training {g['training_tokens_per_s']:.0f} tok/s; peak RSS {g['peak_rss_mb']:.0f} MB")
    if cfg.generate:
        gen = results["generate"] = bench_generate(cfg, model_dir)
        print(f"sampler {gen['sampler']['tokens_per_s']:.0f} tok/s vs model.generate "
              f"{gen['hf_generate']['tokens_per_s']:.0f} tok/s: {gen['speedup_tokens_per_s']:.2f}x; its matmuls alone "
              f"take {gen['sampler_gemm_share']:.0%} of its time, so a decode loop with zero other cost would reach "
              f"{gen['ceiling_vs_generate']:.2f}x")
    if cfg.train:
        results["matmul_gflops"] = max(results["matmul_gflops"], matmul_gflops())  # best seen: MFU errs low
        tr = results["train"] = bench_train(cfg, results["matmul_gflops"], out)
        print(f"train fwd+bwd, {tr['params'] / 1e6:.1f}M params, {tr['batch']}x{tr['seq']}: {tr['tokens_per_s']:.0f} "
              f"tok/s = {tr['achieved_gflops']:.1f} GFLOP/s, MFU {100 * tr['mfu']:.0f}% of the matmul rate")
    if cfg.ablation:
        abl = results["ablation"] = bench_ablation(cfg, model_dir, out)
        base = next(iter(abl.values()))["step_s"]
        for name, r in abl.items():
            print(f"ablation {name}: step {r['step_s']:.3f}s ({base / r['step_s']:.2f}x) = generation "
                  f"{r['generation_s']:.3f} + log-probs {r['logprobs_s']:.3f} + update {r['update_s']:.3f}")
    if cfg.memory:
        mem = results["memory"] = {f"{b}x{cfg.group_size}": _subprocess_grpo(cfg, out, prompts=b)
                                   for b in (cfg.prompts, 2 * cfg.prompts)}
        for k, v in mem.items():
            print(f"memory {k}: peak RSS {v['peak_rss_mb']:.0f} MB, step {v['step_s']:.3f}s")
    if cfg.scaling:
        table = results["scaling"] = {}
        for G in (4, 8, 16):
            table[f"G={G}"] = _subprocess_grpo(cfg, out, group_size=G)
        for T in (32, 64, 128):
            table[f"T={T}"] = _subprocess_grpo(cfg, out, max_new_tokens=T)
        for k, v in table.items():
            print(f"scaling {k}: step {v['step_s']:.3f}s (generation {v['generation_s']:.3f}s, "
                  f"{v['completion_tokens']} tokens)")
    if cfg.vs == "trl":
        trl = results["trl"] = bench_trl(cfg, model_dir, out)
        results["speedup_vs_trl"] = trl["paired_speedup_median"]
        print(f"TRL {trl['trl_version']} GRPOTrainer: median {trl['median_step_s']:.3f}s/step (generation "
              f"{trl['generation_s_per_step']:.3f}s); reasonloop steps paired with them: median "
              f"{statistics.median(trl['paired_reasonloop_steps_s']):.3f}s. reasonloop is "
              f"{trl['paired_speedup_median']:.2f}x faster per step (median of paired ratios; "
              f"{trl['paired_speedup_of_minima']:.2f}x on the fastest steps)")
        results["ceiling_vs_trl"] = trl["median_step_s"] / g["gemm_only_s"]
        print(f"ceiling: our step's matmuls alone take {g['gemm_only_s']:.3f}s, so with zero other cost it would "
              f"be {results['ceiling_vs_trl']:.2f}x faster than TRL's step")
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"bench: results in {out / 'bench.json'}")
    return results


def flags_to_keys(argv: list[str]) -> list[str]:
    """['--vs', 'trl', '--max-new-tokens=32', 'steps=3'] -> ['vs=trl', 'max_new_tokens=32', 'steps=3']."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key, eq, value = a[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"bench: {a} needs a value")
                value, i = argv[i + 1], i + 1
            a = f"{key.replace('-', '_')}={value}"
        out.append(a)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m reasonloop.recipes.bench [--vs trl] [--key value] [key=value ...]`: flags become key=value."""
    from reasonloop.config import ConfigError, load_config, render_help

    raw = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in raw):
        print(f"usage: reasonloop bench [--vs trl] [config.yaml ...] [key=value | --key value ...]\n\n"
              f"{(__doc__ or '').strip()}\n\noptions:\n{render_help(Config)}")
        return 0
    args = flags_to_keys(raw)
    try:
        cfg = load_config(Config, args)
    except ConfigError as exc:
        print(f"bench: config error: {exc}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
