"""Grading throughput: `python -m reasonloop.rewards.bench_grader [--n 10000] [--symbolic-frac 0.1]`.

Builds `n` distinct (completion, gold) pairs shaped like RL traffic: integer answers (GSM8K/AIME,
with thousands separators, units and wrong values), fractions and decimals (MATH, decided by exact
rationals), hacked completions (refused before any maths), and a `symbolic_frac` share of algebraic
answers that need math-verify in the worker pool. Every symbolic pair is unique, so the cache does
not flatter the figure. Worker start-up is excluded and reported separately.
"""

from __future__ import annotations

import argparse
import random
import time

from reasonloop.rewards.math_grader import VerifierPool, grade_batch


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--symbolic-frac", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    pairs = make_pairs(args.n, args.symbolic_frac)
    start = time.perf_counter()
    pool = VerifierPool(args.workers)
    pool.map(int, ["0"] * pool.num_workers, timeout_s=60)  # wait until every worker is ready
    startup = time.perf_counter() - start
    start = time.perf_counter()
    verdicts = grade_batch([c for c, _ in pairs], [g for _, g in pairs], pool=pool)
    elapsed = time.perf_counter() - start
    reasons: dict[str, int] = {}
    for v in verdicts:
        reasons[v.reason] = reasons.get(v.reason, 0) + 1
    print(f"graded {args.n} answers in {elapsed:.2f}s: {args.n / elapsed:,.0f} answers/s "
          f"({pool.num_workers} workers, symbolic share {args.symbolic_frac:.0%}, worker start-up {startup:.1f}s)")
    print("verdict reasons:", dict(sorted(reasons.items(), key=lambda kv: -kv[1])))
    pool.close()


if __name__ == "__main__":
    main()
