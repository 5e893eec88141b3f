"""The GRPO step benchmark (`reasonloop bench`, which=grpo): reasonloop's step, its parts, and
optionally TRL's GRPOTrainer on the same workload. What each part measures is in
`reasonloop.bench`'s docstring; the trainers are built the normal way, from an `rl.Config` (the
switches under test are its `rollout.*` and `forward.*` keys) and an injected `TimedEngine`.
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

from reasonloop.bench.timing import (
    TimedEngine,
    cuda_peak_mb,
    gemm_replay_seconds,
    logprob_gap,
    matmul_gflops,
    peak_rss_mb,
    profiled,
    sync,
)
from reasonloop.config import require
from reasonloop.errors import UserError
from reasonloop.rollout.engine import RolloutConfig, build_engine
from reasonloop.models.forward import ForwardConfig

if TYPE_CHECKING:
    from reasonloop.bench import Config
    from reasonloop.recipes.rl import Trainer

_START_ENV = dict(os.environ)  # subprocesses get the environment as it was before TRL/accelerate ran


# random Llama-shaped models the benchmarks build besides models/tiny.py's presets: (hidden, layers, heads, intermediate)
BENCH_SHAPES = {"base": (768, 12, 12, 2560)}  # ~99M parameters (the workload matrix's "100M")


def prepare_model(name: str, workdir: Path, seed: int, max_positions: int = 256) -> str:
    """A loadable model directory: the embedded asset, a directory, or a random preset saved now
    (nano|tiny|small from models/tiny.py, base from BENCH_SHAPES) with `max_positions` positions."""
    from reasonloop.models.loading import resolve_model_path

    if name not in ("nano", "tiny", "small", *BENCH_SHAPES):
        path = resolve_model_path(name)
        if not Path(path, "config.json").exists():
            raise UserError(f"no model at {path} (give a model directory, or model=nano|tiny|small for a random one)")
        return path
    from transformers import LlamaForCausalLM

    from reasonloop.models.tiny import build_config, build_tokenizer

    path = workdir / (f"random-{name}-seed{seed}" + (f"-pos{max_positions}" if max_positions != 256 else ""))
    if not (path / "config.json").exists():
        tok = build_tokenizer()
        torch.manual_seed(seed)
        conf = build_config(tok, "small" if name in BENCH_SHAPES else name, max_positions=max_positions)
        if name in BENCH_SHAPES:
            hidden, layers, heads, inter = BENCH_SHAPES[name]
            conf.hidden_size, conf.num_hidden_layers, conf.intermediate_size = hidden, layers, inter
            conf.num_attention_heads = conf.num_key_value_heads = heads
            conf.head_dim = hidden // heads
        LlamaForCausalLM(conf).save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return str(path)


def rl_config(cfg: Config, model_dir: str, out: Path, rollout: RolloutConfig | None = None,
              forward: ForwardConfig | None = None):
    """The `rl.Config` of the benchmark's GRPO workload; `rollout` and `forward` default to the bench's own."""
    from reasonloop.distributed.config import MemoryConfig
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
        rollout=dataclasses.replace(rollout or cfg.rollout), forward=dataclasses.replace(forward or cfg.forward),
        memory=MemoryConfig(precision=cfg.precision),
    )


def timed_trainer(rl_cfg) -> tuple[Trainer, TimedEngine]:
    """An `rl.Trainer` built from `rl_cfg` whose rollouts go through a `TimedEngine` around the engine
    `rl_cfg.rollout` names (built on the trainer's own model, as the trainer would build it)."""
    from reasonloop.recipes.rl import Trainer

    timed = TimedEngine()
    trainer = Trainer(rl_cfg, engine=timed)
    timed.inner = build_engine(rl_cfg.rollout, trainer.model, trainer.tokenizer)
    return trainer, timed


def bench_grpo(cfg: Config, model_dir: str, out: Path, ceiling: bool = True) -> dict:
    """Median per-step figures of reasonloop's GRPO step (and, with `ceiling`, its matmuls alone)."""
    trainer, timed = timed_trainer(rl_config(cfg, model_dir, out / "reasonloop-run"))
    rows: list[dict] = []
    for i in range(cfg.warmup + cfg.steps):
        timed.reset()
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
        with profiled() as prof:
            trainer.step()
        (out / "profile_grpo_step.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    trainer.run.close()
    return result


ABLATIONS = {  # cumulative: each row adds one optimisation to the one above
    "baseline (DynamicCache sampler, plain forward)":
        (RolloutConfig(static_cache=False, fused_decode=False), ForwardConfig(share_prompts=False, bucket_lengths=False)),
    "+ static KV cache sampler":
        (RolloutConfig(static_cache=True, fused_decode=False), ForwardConfig(share_prompts=False, bucket_lengths=False)),
    "+ shared-prompt training forward":
        (RolloutConfig(static_cache=True, fused_decode=False), ForwardConfig(share_prompts=True, bucket_lengths=False)),
    "+ length buckets":
        (RolloutConfig(static_cache=True, fused_decode=False), ForwardConfig(share_prompts=True, bucket_lengths=True)),
    "+ compiled decode step":
        (RolloutConfig(static_cache=True, fused_decode=True), ForwardConfig(share_prompts=True, bucket_lengths=True)),
}


def bench_ablation(cfg: Config, model_dir: str, out: Path) -> dict:
    """Median step figures of each ABLATIONS row, their steps interleaved round-robin in this process."""
    trainers = {name: timed_trainer(rl_config(cfg, model_dir, out / f"ablation-{i}", rollout, forward))
                for i, (name, (rollout, forward)) in enumerate(ABLATIONS.items())}
    rows: dict[str, list[dict]] = {name: [] for name in ABLATIONS}
    for i in range(cfg.warmup + cfg.steps):
        for name, (trainer, timed) in trainers.items():
            timed.reset()
            t = time.perf_counter()
            metrics, _ = trainer.step()
            wall = time.perf_counter() - t
            if i >= cfg.warmup:
                rows[name].append({"step_s": wall, "generation_s": timed.seconds,
                                   "logprobs_s": metrics["time/logprobs"], "update_s": metrics["time/train"]})
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

    tok = load_tokenizer(model_dir)
    model = load_model(ModelConfig(name=model_dir)).eval()
    exs = make_task("arithmetic").examples("train", cfg.prompts, seed=cfg.seed + 1)
    prompts = [render_prompt(tok, e.prompt) for e in exs]
    sampling = SamplingConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    sampler = build_engine(cfg.rollout, model, tok)
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
            sync()
            t = time.perf_counter()
            runs[name]["tokens"].append(fn(r + 1))
            sync()
            runs[name]["s"].append(time.perf_counter() - t)
    res: dict = {name: {"median_s": statistics.median(r["s"]), "tokens": statistics.median(r["tokens"]),
                        "tokens_per_s": sum(r["tokens"]) / sum(r["s"])} for name, r in runs.items()}
    rate = {name: [k / s for k, s in zip(r["tokens"], r["s"])] for name, r in runs.items()}
    res["speedup_tokens_per_s"] = statistics.median(a / b for a, b in zip(rate["sampler"], rate["hf_generate"]))
    gemm_s = gemm_replay_seconds(lambda: ours(reps + 1), reps, model.device)
    res["sampler_gemm_only_s"] = gemm_s
    res["sampler_gemm_share"] = gemm_s / res["sampler"]["median_s"]
    res["ceiling_vs_generate"] = res["speedup_tokens_per_s"] / res["sampler_gemm_share"]
    # what the trainer's float32 forward makes of the sampler's tokens (rollout.decode_precision=bf16 moves it)
    res["logprob_gap"] = logprob_gap(model, sampler.generate(prompts, cfg.group_size, sampling,
                                                             torch.Generator().manual_seed(reps + 2)),
                                     cfg.temperature or 1.0)
    return res


def bench_train(cfg: Config, gflops: float, out: Path) -> dict:
    """Forward+backward of the 'small' preset at `train_seq` tokens per row, with `policy_forward`."""
    from transformers import LlamaForCausalLM

    from reasonloop.models.tiny import build_config, build_tokenizer
    from reasonloop.data.records import TokenBatch
    from reasonloop.models.forward import policy_forward

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
        sync()
        t = time.perf_counter()
        one()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    tokens_per_s = B * S / med
    flops_per_token = 6 * params + 12 * conf.num_hidden_layers * conf.hidden_size * S
    achieved = flops_per_token * tokens_per_s / 1e9
    if cfg.profile:
        with profiled() as prof:
            one()
        (out / "profile_train_step.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    return {"params": params, "batch": B, "seq": S, "median_s": med, "tokens_per_s": tokens_per_s,
            "achieved_gflops": achieved, "mfu": achieved / gflops}


def trl_trainer(cfg: Config, model_dir: str, out_dir: Path, examples: list, specs: list, max_steps: int,
                callbacks: list, min_new_tokens: int = 0, logging_steps: int = 1) -> tuple:
    """TRL's GRPOTrainer on `examples` (in this order) with the bench's hyper-parameters, and a dict
    its timing wrappers fill: seconds in `generate` and in no-grad (reference/old) log-prob passes.
    `min_new_tokens` forces every completion to that many tokens (EOS masked, transformers' switch)."""
    try:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, PrinterCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as exc:
        raise UserError(f"vs=trl needs TRL (pip install -e .[trl]): {exc}") from None
    from reasonloop.models.loading import load_tokenizer, render_prompt

    require(cfg.prompts * cfg.group_size % cfg.micro_batch_size == 0,
            "vs=trl needs prompts*group_size divisible by micro_batch_size")
    tok = load_tokenizer(model_dir)
    rows = [{"prompt": render_prompt(tok, e.prompt), "answer": e.answer, **e.meta} for e in examples]
    columns = ["answer", *{k for e in examples for k in e.meta}]

    def wrap(spec):
        def fn(prompts, completions, **kw):
            return spec.fn(prompts=prompts, completions=completions, **{k: kw[k] for k in columns if k in kw})

        fn.__name__ = spec.name
        return fn

    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.prompts * cfg.group_size // cfg.micro_batch_size,
        num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens, learning_rate=cfg.lr,
        lr_scheduler_type="constant", warmup_steps=0, beta=cfg.beta, temperature=cfg.temperature, top_k=0,
        top_p=1.0, num_iterations=1, loss_type="grpo", scale_rewards="group", epsilon=0.2, use_vllm=False,
        use_cpu=not torch.cuda.is_available(), bf16=cfg.precision == "bf16", max_steps=max_steps,
        logging_steps=logging_steps,
        save_strategy="no", report_to="none", shuffle_dataset=False, seed=cfg.seed, dataloader_num_workers=0,
        reward_weights=[s.weight for s in specs], max_grad_norm=1.0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, disable_tqdm=True,
        generation_kwargs={"min_new_tokens": min_new_tokens} if min_new_tokens else None,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=[wrap(s) for s in specs], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # its per-step log dicts would interleave with the bench's lines
    parts = {"generation_s": 0.0, "nograd_logprobs_s": 0.0}
    inner_generate, inner_logps = trainer.model.generate, trainer._get_per_token_logps_and_entropies

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return inner_generate(*a, **k)
        finally:
            parts["generation_s"] += time.perf_counter() - t

    def timed_logps(*a, **k):
        if torch.is_grad_enabled():
            return inner_logps(*a, **k)
        t = time.perf_counter()
        try:
            return inner_logps(*a, **k)
        finally:
            parts["nograd_logprobs_s"] += time.perf_counter() - t

    trainer.model.generate = timed_generate
    trainer._get_per_token_logps_and_entropies = timed_logps
    torch.set_num_threads(cfg.threads)  # TrainingArguments may reset threads; keep the comparison fair
    return trainer, parts


def bench_trl(cfg: Config, model_dir: str, out: Path) -> dict:
    """TRL's GRPOTrainer on the same model, prompts (in the same order), rewards and hyper-parameters."""
    from transformers import TrainerCallback

    from reasonloop.recipes.rl import Trainer

    # the prompts reasonloop's trainer draws, in its order (same seed, same pool), read from a first
    # trainer of the same config; the paired one then draws the same prompts, one step after each TRL step
    drawer = Trainer(rl_config(cfg, model_dir, out / "reasonloop-prompts"))
    examples = drawer.next_prompts((cfg.warmup + cfg.steps) * cfg.prompts)
    drawer.run.close()
    del drawer
    ours = Trainer(rl_config(cfg, model_dir, out / "reasonloop-paired"))

    class StepTimer(TrainerCallback):
        """Times each TRL step, then runs one reasonloop step on the same prompts: paired under one load."""

        def __init__(self):
            self.times: list[float] = []
            self.ours: list[float] = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            self.times.append(time.perf_counter() - self.t)
            t = time.perf_counter()
            ours.step()
            sync()
            self.ours.append(time.perf_counter() - t)

    timer = StepTimer()
    trainer, parts = trl_trainer(cfg, model_dir, out / "trl-run", examples, ours.task.rewards(),
                                 cfg.warmup + cfg.steps, [timer])
    trainer.train()
    timed, paired = timer.times[cfg.warmup:], timer.ours[cfg.warmup:]
    ours.run.close()
    return {"median_step_s": statistics.median(timed), "min_step_s": min(timed), "steps_s": timed,
            "paired_reasonloop_steps_s": paired,
            "paired_speedup_median": statistics.median(t / o for t, o in zip(timed, paired)),
            "paired_speedup_of_minima": min(timed) / min(paired),
            "generation_s_per_step": parts["generation_s"] / max(1, len(timer.times)), "peak_rss_mb": peak_rss_mb(),
            "trl_version": __import__("trl").__version__}


def workload_keys(cfg: Config) -> dict:
    """The `key=value` pairs that give a `reasonloop bench` subprocess this workload (model, batch, hyper-parameters,
    precision, rollout and forward switches)."""
    return {"model": cfg.model, "prompts": cfg.prompts, "group_size": cfg.group_size,
            "max_new_tokens": cfg.max_new_tokens, "steps": cfg.steps, "warmup": cfg.warmup,
            "micro_batch_size": cfg.micro_batch_size, "threads": cfg.threads, "seed": cfg.seed, "lr": cfg.lr,
            "beta": cfg.beta, "temperature": cfg.temperature, "precision": cfg.precision,
            **{f"rollout.{k}": v for k, v in dataclasses.asdict(cfg.rollout).items()},
            **{f"forward.{k}": v for k, v in dataclasses.asdict(cfg.forward).items()}}


def _subprocess_grpo(cfg: Config, out: Path, **overrides) -> dict:
    """One GRPO timing in a fresh process (so peak RSS belongs to that batch size alone)."""
    keys = {**workload_keys(cfg), **overrides}
    name = "-".join(f"{k}{v}" for k, v in overrides.items())
    argv = [f"{k}={v}" for k, v in keys.items()] + ["only=grpo", f"output_dir={out / ('sub-' + name)}"]
    proc = subprocess.run([sys.executable, "-m", "reasonloop.cli", "bench", *argv], capture_output=True, text=True,
                          check=False,
                          env={**_START_ENV, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode != 0:
        raise RuntimeError(f"bench subprocess failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------


def run(cfg: Config, out: Path) -> dict:
    """Every part of the GRPO benchmark that `cfg` switches on, printed as it finishes; the results."""
    from reasonloop.train.run import set_threads

    set_threads(cfg.threads)  # the same CPU settings as every recipe (TRL runs in this process too)
    try:
        torch.set_num_interop_threads(cfg.interop_threads)
    except RuntimeError:  # already set in this process
        pass
    model_dir = prepare_model(cfg.model, Path(tempfile.gettempdir()) / "reasonloop-bench-models", cfg.seed)
    if cfg.only == "grpo":
        res = bench_grpo(cfg, model_dir, out, ceiling=False)  # memory/scaling rows: their own process
        res.pop("steps")
        print(json.dumps(res))
        return res

    results: dict = {"config": dataclasses.asdict(cfg), "model_dir": model_dir, "torch": torch.__version__,
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
        gap = gen["logprob_gap"]
        print(f"sampler log-probs ({cfg.rollout.decode_precision}) vs the float32 forward on its tokens: mean "
              f"|diff| {gap['mean_abs_gap']:.1e}, max {gap['max_abs_gap']:.1e}; importance ratios "
              f"{gap['min_ratio']:.3f}-{gap['max_ratio']:.3f}")
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
    return results
