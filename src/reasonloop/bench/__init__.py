"""Benchmarks: the GRPO step (optionally against TRL's GRPOTrainer), the answer grader, the sandbox.

`reasonloop bench [which=grpo|grader|sandbox] [key=value ...]`. Every benchmark builds what it times
the normal way, from configs (the GRPO trainers from an `rl.Config` whose `rollout.*` and
`forward.*` keys are the switches under test, with an injected `TimedEngine`); none patches a module.

which=grpo (the default; `bench/grpo.py`) runs, in one process and with `threads` torch threads:

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
8. ablation   (ablation=true) trainers stepping in turn in one process: baseline, + static KV cache
              sampler, + shared-prompt training forward, + length buckets, + compiled decode step.

race=true (`bench/race.py`, keys `race_*`) instead trains reasonloop and TRL's GRPOTrainer with the same
GRPO configuration from the same model until held-out greedy pass@1 reaches `race_target`: wall time and
samples to the target for both. matrix=true (`bench/matrix.py`, keys `matrix_*`) instead times the GRPO
step against TRL, the sampler against `generate` and its matmul bound, and peak RSS, for random ~2M/~20M/
~100M Llama-shaped models x forced completion lengths 64/256/1024 (docs/speed.md, "Speed II").

which=grader (`bench/grader.py`, keys `grader.*`): answers graded per second by the math grader, with
a share of symbolic answers that need math-verify. which=sandbox (`bench/sandbox.py`, keys
`sandbox.*`): sandboxed executions per second for trivial, sleeping and busy programs. which=search
(`bench/search.py`, keys `search.*`): beam and MCTS on the embedded arithmetic task with and without
prefix reuse (continuing partial solutions from cached K/V vs re-prefilling them): generated tokens/s,
prefilled tokens and the reuse/prefill ratio. which=bitnet (`bench/bitnet.py`, keys `bitnet.*`): weight
bytes, RSS and decode tokens/s of the ternary kernel vs fp32 decoding at tiny/~100M/~700M shapes, with a
memory-bandwidth roofline (docs/bitnet.md). which=multiturn (`bench/multiturn.py`, keys
`multiturn.*`): tool episodes continuing from the cached K/V against re-prefilling every conversation each turn.
which=logits (`bench/logits.py`, keys `logits.*`): peak memory and time of the training forward + backward through
the output layer at a Qwen-sized vocabulary, the model's own logits against `forward.logit_chunk`.

Results go to `<output_dir>/bench.json` (+ `profile_*.txt` torch.profiler tables with profile=true).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from reasonloop.bench.bitnet import BitNetBenchConfig
from reasonloop.bench.grader import GraderBenchConfig
from reasonloop.bench.logits import LogitsBenchConfig
from reasonloop.bench.sandbox import SandboxBenchConfig
from reasonloop.bench.search import SearchBenchConfig
from reasonloop.bench.multiturn import MultiturnBenchConfig
from reasonloop.config import require, require_choice
from reasonloop.models.forward import ForwardConfig
from reasonloop.rollout.engine import RolloutConfig
from reasonloop.train.runconfig import SEED_LIMIT


@dataclass
class Config:
    which: str = "grpo"
    """Benchmark to run: grpo (the RL step; the keys below up to `only`), grader (`grader.*`), sandbox (`sandbox.*`),
    search (`search.*`: step-level search with and without prefix reuse), bitnet (`bitnet.*`: the ternary kernel),
    multiturn (`multiturn.*`), logits (`logits.*`: the output layer whole or in chunks at a large vocabulary)."""
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
    """Interleave steps of trainers in one process (baseline, +static cache, +shared prompts, +length
    buckets, +compiled decode step) so that load changes hit all of them alike; prints what each optimisation buys."""
    race: bool = False
    """Train reasonloop and TRL's GRPOTrainer with the same GRPO configuration from the embedded model until
    held-out greedy pass@1 reaches `race_target` (or `race_max_steps`); wall time and samples to the target
    (bench/race.py). Runs instead of the GRPO-step parts above."""
    race_target: float = 0.75
    """Held-out greedy pass@1 that ends the race."""
    race_max_steps: int = 150
    """Step cap of each side of the race."""
    race_eval_every: int = 2
    """Steps between held-out evaluations (both sides; not counted in the training time)."""
    race_eval_n: int = 200
    """Held-out problems per evaluation (the same ones, the same greedy decode, for both sides)."""
    race_prompts: int = 16
    """B of the race (its G is `group_size`)."""
    matrix: bool = False
    """The workload matrix (bench/matrix.py): GRPO step vs TRL, sampler vs generate and vs its matmul bound, and
    peak RSS, for random ~2M/~20M/~100M models x forced completion lengths. Runs instead of the parts above."""
    matrix_sizes: list[str] = field(default_factory=lambda: ["tiny", "small", "base"])
    """Model presets of the matrix: tiny (~2M), small (~20M), base (~100M)."""
    matrix_lengths: list[int] = field(default_factory=lambda: [64, 256, 1024])
    """Forced completion lengths of the matrix."""
    matrix_batch: list[int] = field(default_factory=list)
    """[B, G]: every cell's prompts x group size instead of the per-cell table, which shrinks the batch as the cells
    grow so that the matrix fits ~25 minutes at one thread (bench/matrix.py `CELLS`); the micro-batch stays <= 32."""
    matrix_part: str = "all"
    """all | time (step and sampler timings) | memory (peak RSS per framework, fresh processes)."""
    matrix_side: str = "both"
    """Internal: the framework of an only=memory process (reasonloop | trl)."""
    profile: bool = False
    """Save torch.profiler tables of one GRPO step and one training step to the output directory."""
    precision: str = "fp32"
    """Training precision of both trainers: fp32, or bf16 (reasonloop's `memory.precision=bf16`, TRL's `bf16=True`:
    bf16 autocast of the forward passes, fp32 master weights and optimizer state; TRL's generation then runs under
    it too). The sampler's own precision is `rollout.decode_precision`."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """The rollout engine of the timed trainers and of the sampler benchmark (the same keys as `train`'s)."""
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    """The training forward of the timed trainers (the same keys as `train`'s)."""
    only: str = ""
    """Internal: 'grpo' runs just the GRPO timing and prints JSON (used by the memory/scaling subprocesses);
    'cell' / 'memory' one cell of the workload matrix."""
    grader: GraderBenchConfig = field(default_factory=GraderBenchConfig)
    """which=grader: the grading workload."""
    sandbox: SandboxBenchConfig = field(default_factory=SandboxBenchConfig)
    """which=sandbox: the sandbox workload."""
    search: SearchBenchConfig = field(default_factory=SearchBenchConfig)
    """which=search: the search workload (model, threads, seed and rollout.* are the keys above)."""
    bitnet: BitNetBenchConfig = field(default_factory=BitNetBenchConfig)
    """which=bitnet: the shapes, thread counts and decode lengths."""
    logits: LogitsBenchConfig = field(default_factory=LogitsBenchConfig)
    """which=logits: the vocabulary, model and batch, and the logit_chunk values measured."""
    multiturn: MultiturnBenchConfig = field(default_factory=MultiturnBenchConfig)
    """which=multiturn: tool episodes with K/V reuse vs re-prefilling each turn (bench/multiturn.py; tiny-tool)."""
    output_dir: str = ""
    """Where bench.json goes; empty means runs/bench-<timestamp>."""
    seed: int = 0
    """Seed for prompts, sampling and initialisation."""

    def __post_init__(self):
        require_choice("which", self.which, ["grpo", "grader", "sandbox", "search", "bitnet", "multiturn", "logits"])
        require_choice("vs", self.vs, ["", "trl"])
        require_choice("only", self.only, ["", "grpo", "cell", "memory"])
        require_choice("matrix_part", self.matrix_part, ["all", "time", "memory"])
        require_choice("matrix_side", self.matrix_side, ["both", "reasonloop", "trl"])
        require_choice("precision", self.precision, ["fp32", "bf16"])
        require(0 < self.race_target <= 1, "race_target must be in (0, 1]")
        require(self.race_max_steps > 0 and self.race_eval_every > 0 and self.race_eval_n > 0,
                "race_max_steps, race_eval_every and race_eval_n must be > 0")
        require(all(t > 0 for t in self.matrix_lengths), "matrix_lengths must be > 0")
        require(not self.matrix_batch or (len(self.matrix_batch) == 2 and self.matrix_batch[0] > 0
                                          and self.matrix_batch[1] >= 2),
                f"matrix_batch={self.matrix_batch}: give [prompts, group_size] with prompts > 0 and group_size >= 2")
        require(self.prompts > 0 and self.group_size >= 2, "need prompts > 0 and group_size >= 2")
        require(self.steps > 0 and self.warmup >= 0, "need steps > 0 and warmup >= 0")
        require(self.threads > 0 and self.interop_threads > 0, "threads must be > 0")
        require(0 <= self.seed < SEED_LIMIT, f"seed={self.seed}: must be in [0, {SEED_LIMIT - 1}]")


def run(cfg: Config) -> dict:
    """Run the benchmark `cfg.which` names; its results, also written to `<output_dir>/bench.json`."""
    out = Path(cfg.output_dir or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.which == "grader":
        from reasonloop.bench import grader

        results = grader.run(cfg.grader)
    elif cfg.which == "sandbox":
        from reasonloop.bench import sandbox

        results = sandbox.run(cfg.sandbox)
    elif cfg.which == "bitnet":
        from reasonloop.bench import bitnet

        results = bitnet.run(cfg.bitnet)
    elif cfg.which == "logits":
        from reasonloop.bench import logits

        results = logits.run(cfg.logits, cfg.seed)
    elif cfg.which == "multiturn":
        from reasonloop.bench import multiturn

        results = multiturn.run(cfg)
    elif cfg.which == "search":
        import tempfile

        from reasonloop.bench import search
        from reasonloop.bench.grpo import prepare_model

        results = search.run(cfg, prepare_model(cfg.model, Path(tempfile.gettempdir()) / "reasonloop-bench-models",
                                                cfg.seed))
    elif cfg.only in ("cell", "memory"):  # a matrix cell's subprocess: its caller reads the JSON line
        from reasonloop.bench import matrix
        from reasonloop.train.run import set_threads

        set_threads(cfg.threads)
        results = matrix.run_cell(cfg, out)
        print(json.dumps(results, default=str))
        return results
    elif cfg.race or cfg.matrix:
        import torch

        from reasonloop.bench.timing import matmul_gflops
        from reasonloop.train.run import set_threads

        set_threads(cfg.threads)
        results = {"config": dataclasses.asdict(cfg), "torch": torch.__version__, "threads": cfg.threads,
                   "matmul_gflops": matmul_gflops()}
        print(f"fp32 matmul (1024^3, best of 10): {results['matmul_gflops']:.1f} GFLOP/s on {cfg.threads} thread(s)")
        if cfg.race:
            from reasonloop.bench import race

            results["race"] = race.run(cfg, out)
        if cfg.matrix:
            from reasonloop.bench import matrix

            results["matrix"] = matrix.run(cfg, out)
    else:
        from reasonloop.bench import grpo

        results = grpo.run(cfg, out)
        if cfg.only:  # a subprocess row: its caller reads the JSON line it printed
            return results
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"bench: results in {out / 'bench.json'}")
    return results
