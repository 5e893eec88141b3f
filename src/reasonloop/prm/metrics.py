"""How good a process reward model is: step-label AUC, outcome AUC, first-error accuracy.

- **step AUC**: ROC AUC of the PRM's step scores against held-out hard step labels (MC labels of
  test-split solutions): the probability that a random good step outscores a random bad one.
- **outcome AUC**: AUC of the LAST step's score against the solution's verdict: how well the PRM
  ranks whole solutions (what best-of-N with `last` aggregation uses; an ORM's job).
- **first-error accuracy** (ProcessBench-style, on traces with a known first wrong step): the fraction of
  corrupted traces whose first step scored below `threshold` is exactly the corrupted step; and, for
  correct traces, the fraction with no step below it.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence


class ManyStepScorer(Protocol):
    def score_many(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]: ...

    def split(self, completion: str) -> list[str]: ...


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic over positives x negatives, ties counting
    one half); NaN when either class is absent."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average ranks (1-based) over runs of tied scores
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def first_flagged(scores: Sequence[float], threshold: float = 0.5) -> int | None:
    """Index of the first step scored below `threshold`, None when no step is."""
    return next((i for i, s in enumerate(scores) if s < threshold), None)


def first_error_accuracy(scores: Sequence[Sequence[float]], first_errors: Sequence[int | None],
                         threshold: float = 0.5) -> dict[str, float]:
    """`first_error_acc` over traces with a first error (the first flagged step is it), `correct_trace_acc`
    over correct traces (no step flagged); NaN where a kind is absent."""
    hits = {True: [], False: []}
    for s, err in zip(scores, first_errors, strict=True):
        hits[err is not None].append(first_flagged(s, threshold) == err)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"first_error_acc": mean(hits[True]), "correct_trace_acc": mean(hits[False]),
            "error_traces": len(hits[True]), "correct_traces": len(hits[False])}


def evaluate(prm: ManyStepScorer, held_out: Sequence[Any], traces: Sequence[Any] = (),
             threshold: float = 0.5) -> dict[str, float]:
    """The metrics above on `held_out` (`StepExample`s) and `traces` (`tasks.arithmetic.ErrorTrace`s)."""
    out: dict[str, float] = {}
    if held_out:
        scores = prm.score_many([e.prompt for e in held_out], [e.steps for e in held_out])
        flat = [s for row in scores for s in row]
        labels = [y for e in held_out for y in e.labels]
        out["step_auc"] = roc_auc(flat, labels)
        out["step_acc"] = sum((s >= threshold) == y for s, y in zip(flat, labels)) / len(flat)
        known = [(row[-1], e.outcome) for row, e in zip(scores, held_out) if e.outcome is not None]
        out["outcome_auc"] = roc_auc([s for s, _ in known], [y for _, y in known]) if known else float("nan")
        out["held_out_steps"] = len(flat)
        out["held_out_positive_frac"] = sum(labels) / len(labels)
    if traces:
        scores = prm.score_many([t.prompt for t in traces], [prm.split(t.completion) for t in traces])
        out.update(first_error_accuracy(scores, [t.first_error for t in traces], threshold))
    return {k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in out.items()}
