"""Two evaluations of the same problems compared problem by problem (`reasonloop eval baseline=<run dir>`).

A gain of 0.02 on 200 problems is four problems, which the draw of the problems alone can give: the same
model scored on another 200 moves by ~0.03. Comparing two models on the same problems removes that draw;
what is left is which problems each one solves. The interval is a paired bootstrap: the problems are
resampled with replacement and the mean difference recomputed (Efron & Tibshirani 1993; the usual test
for "is model B better than model A on this benchmark", e.g. Koehn 2004 for MT).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from reasonloop.algos.passk import pass_at_k
from reasonloop.data.io import describe_skips, iter_jsonl


@dataclass(frozen=True)
class Difference:
    metric: str
    n: int  # problems in both evaluations
    baseline: float
    other: float
    lo: float  # the 95% paired-bootstrap interval of other - baseline
    hi: float

    @property
    def delta(self) -> float:
        return self.other - self.baseline


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The sample rows of an evaluation's JSONL file, read by data.io's reader; a line it would skip (malformed,
    not UTF-8, not an object, oversized) is a ValueError here: a comparison on part of the rows would be wrong."""
    skips: Counter = Counter()
    rows = list(iter_jsonl(path, skips))
    if skips:
        raise ValueError(describe_skips(skips))
    return rows


def per_problem(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """id -> {"greedy": 0/1 (if decoded greedily), "correct": right samples, "samples": samples} from an
    evaluation's sample rows (train/evaluation.evaluate's, as `reasonloop eval` writes them to samples.jsonl)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:  # a task's id may be a truncated text, so the prompt is part of the key
        stats = out.setdefault(f"{row['id']}\n{row.get('prompt', '')}", {"correct": 0, "samples": 0})
        if row["mode"] == "greedy":
            stats["greedy"] = int(row["correct"])
        elif row["mode"] == "sampled":
            stats["correct"] += int(row["correct"])
            stats["samples"] += 1
    return out


def problem_columns(stats: dict[str, dict[str, int]], ids: list[str], k: int) -> dict[str, np.ndarray]:
    """Per problem of `ids` (in that order): pass@1_greedy where every one was decoded greedily, and with k > 0
    samples each pass@1 (right samples / samples) and, for k > 1, pass@k; their means are the table's."""
    columns = {}
    if all("greedy" in stats[i] for i in ids):
        columns["pass@1_greedy"] = np.array([stats[i]["greedy"] for i in ids], dtype=float)
    if k > 0:
        columns["pass@1"] = np.array([stats[i]["correct"] / stats[i]["samples"] for i in ids], dtype=float)
        if k > 1:
            columns[f"pass@{k}"] = np.array([pass_at_k(stats[i]["samples"], stats[i]["correct"], k) for i in ids],
                                            dtype=float)
    return columns


def bootstrap_interval(differences: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 95% paired-bootstrap interval of the mean of per-problem `differences`."""
    draws = np.random.default_rng(seed).integers(0, len(differences), size=(resamples, len(differences)))
    lo, hi = np.quantile(differences[draws].mean(axis=1), [0.025, 0.975])
    return float(lo), float(hi)


def paired_differences(baseline: dict[str, dict[str, int]], other: dict[str, dict[str, int]],
                       resamples: int = 2000, seed: int = 0) -> list[Difference]:
    """pass@1 greedy, pass@1 sampled and pass@k (k: the fewer samples per problem of the two, the same for
    every problem) of `other` against `baseline` on the problems both hold, with 95% paired-bootstrap
    intervals; a metric one side lacks is left out."""
    ids = sorted(baseline.keys() & other.keys())
    if not ids:
        return []
    k = min(min(side[i]["samples"] for i in ids) for side in (baseline, other))
    a_columns, b_columns = problem_columns(baseline, ids, k), problem_columns(other, ids, k)
    out = []
    for metric in (m for m in a_columns if m in b_columns):
        a, b = a_columns[metric], b_columns[metric]
        lo, hi = bootstrap_interval(b - a, resamples, seed)
        out.append(Difference(metric, len(ids), float(a.mean()), float(b.mean()), lo, hi))
    return out


def format_differences(diffs: list[Difference], names: tuple[str, str] = ("baseline", "this")) -> str:
    lines = [f"{'metric':<14} {names[0]:>9} {names[1]:>9} {'difference':>11}   95% interval (paired bootstrap)"]
    for d in diffs:
        lines.append(f"{d.metric:<14} {d.baseline:>9.3f} {d.other:>9.3f} {d.delta:>+11.3f}   [{d.lo:+.3f}, {d.hi:+.3f}]")
    return "\n".join(lines)
