"""Grading throughput (`reasonloop bench which=grader grader.n=10000 grader.symbolic_frac=0.1`).

Builds `n` distinct (completion, gold) pairs shaped like RL traffic: integer answers (GSM8K/AIME,
with thousands separators, units and wrong values), fractions and decimals (MATH, decided by exact
rationals), hacked completions (refused before any maths), and a `symbolic_frac` share of algebraic
answers that need math-verify in the worker pool. Every symbolic pair is unique, so the cache does
not flatter the figure. Worker start-up is excluded and reported separately.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from reasonloop.config import require
from reasonloop.rewards.math_grader import VerifierPool, grade_batch


@dataclass
class GraderBenchConfig:
    n: int = 10_000
    """(completion, gold) pairs graded."""
    symbolic_frac: float = 0.1
    """Share of algebraic answers that need math-verify in the worker pool."""
    workers: int = 0
    """Worker processes of the verifier pool; 0 takes the pool's default (cores, at most 4)."""

    def __post_init__(self):
        require(self.n > 0, "grader.n must be > 0")
        require(0 <= self.symbolic_frac <= 1, "grader.symbolic_frac must be in [0, 1]")
        require(self.workers >= 0, "grader.workers must be >= 0")


def wrap(answer: str) -> str:
    return f"<think>Let me work through it step by step.</think><answer>{answer}</answer>"


def make_pairs(n: int, symbolic_frac: float, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        u = rng.random()
        if u < symbolic_frac:  # (x+a)^2 vs its expansion, sometimes with a wrong middle term
            a = i + 2
            mid = 2 * a if rng.random() < 0.7 else 2 * a + 1
            pairs.append((wrap(f"(x+{a})^2"), f"x^2+{mid}x+{a * a}"))
        elif u < symbolic_frac + 0.2:  # fractions vs decimals
            p, q = rng.randint(1, 99), rng.choice([2, 4, 5, 8, 10, 20, 25])
            pred = f"{p / q}" if rng.random() < 0.5 else f"\\frac{{{p}}}{{{q}}}"
            pairs.append((wrap(pred), f"\\frac{{{p}}}{{{q + (rng.random() < 0.3)}}}"))
        elif u < symbolic_frac + 0.3:  # hacks
            v = rng.randint(1, 10_000)
            pairs.append((rng.choice([f"\\boxed{{{v}}}", f"<think></think><answer>{v}</answer>", wrap(f"{v}, {v + 1}")]), str(v)))
        else:  # integers, some formatted, some wrong
            v = rng.randint(1, 100_000)
            pred = rng.choice([str(v), f"{v:,}", f"\\${v}", f"{v} apples", str(v + rng.randint(1, 9))])
            pairs.append((wrap(pred), str(v)))
    return pairs


def run(cfg: GraderBenchConfig) -> dict:
    """Grade `cfg.n` pairs through a ready worker pool; prints and returns the rate and the verdict reasons."""
    pairs = make_pairs(cfg.n, cfg.symbolic_frac)
    start = time.perf_counter()
    pool = VerifierPool(cfg.workers or None)
    pool.map(int, ["0"] * pool.num_workers, timeout_s=60)  # wait until every worker is ready
    startup = time.perf_counter() - start
    start = time.perf_counter()
    verdicts = grade_batch([c for c, _ in pairs], [g for _, g in pairs], pool=pool)
    elapsed = time.perf_counter() - start
    reasons: dict[str, int] = {}
    for v in verdicts:
        reasons[v.reason] = reasons.get(v.reason, 0) + 1
    print(f"graded {cfg.n} answers in {elapsed:.2f}s: {cfg.n / elapsed:,.0f} answers/s "
          f"({pool.num_workers} workers, symbolic share {cfg.symbolic_frac:.0%}, worker start-up {startup:.1f}s)")
    reasons = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    print("verdict reasons:", reasons)
    pool.close()
    return {"answers": cfg.n, "seconds": elapsed, "answers_per_s": cfg.n / elapsed, "workers": pool.num_workers,
            "symbolic_frac": cfg.symbolic_frac, "worker_startup_s": startup, "reasons": reasons}
