"""Compute-optimal allocation of test-time compute (Snell et al. 2024, "Scaling LLM test-time compute
optimally"): estimate each problem's difficulty from a cheap pilot, bin the problems into difficulty
buckets, and per bucket choose the strategy and budget that maximise accuracy under a compute budget.
The choice is made on a *selection* split and evaluated on held-out problems it never saw.

Pure functions over tables; `reasonloop search allocate.candidates=[...]` (recipes/search.py) runs the
pilot, fills one table per split and reports the compute-optimal curve against every single strategy.

- **Difficulty** of a problem, from its pilot samples: `agreement_difficulty` (1 - the winning answer's
  share of the samples: 0 when all agree) or `score_difficulty` (1 - the mean PRM score of the samples;
  with the task's verifier as the score it is the oracle difficulty Snell et al. bin by).
- **Buckets**: `quantile_edges` of the selection split's difficulties (equal-count bins), then
  `assign_buckets`: a problem goes to the first bucket whose upper edge is >= its difficulty. Ties are
  never split, so there can be fewer buckets than asked for.
- **Table**: per bucket, per `Option` (a strategy at a budget, or `PILOT`: spend nothing more and answer
  with the pilot's majority vote), a `Cell`: problems answered right and compute spent there.
- **Allocation**: one option per bucket. `frontier` is every allocation no other one beats at no more
  cost (exact: Pareto frontiers merged bucket by bucket; at most problems+1 points). `allocate` returns
  the most accurate way to spend a budget: the pilot plus a frontier allocation (the pilot's compute
  counts), or a single option for every problem without a pilot, whichever is better on the table —
  so the allocator never loses to the best single strategy *on the selection split*.

Departures from Snell et al.: they bin by oracle difficulty from 2048 samples (or a model-predicted one)
and do not charge its cost; here the pilot is a few samples and is charged. They choose per bin at each
fixed budget N; here the budget itself is chosen per bucket too, under an average-compute constraint.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

COSTS = ("generated", "forward")


@dataclass(frozen=True)
class Option:
    """A strategy entry of `reasonloop search` (e.g. `best_of_n:prm`) at budget search.n, or `PILOT`."""

    strategy: str
    budget: int

    def __str__(self) -> str:
        return self.strategy if self.budget == 0 else f"{self.strategy}@{self.budget}"


PILOT = Option("pilot", 0)  # stop: answer with the pilot's majority vote, nothing more spent


@dataclass(frozen=True)
class Cell:
    """One option on the problems of one bucket: how many it answered right and what it spent (totals)."""

    correct: int
    generated: float = 0.0  # tokens the policy sampled
    forward: float = 0.0  # every token any model read or wrote (generated + prefilled + scored)


@dataclass(frozen=True)
class Allocation:
    options: tuple[Option, ...]  # one per bucket
    correct: int
    cost: float  # total over the problems, pilot included when `pilot`
    pilot: bool = True  # False: a single option for every problem, no pilot run


def agreement_difficulty(answers: Sequence[Hashable | None]) -> float:
    """1 - (samples carrying the most common answer) / (all samples); a sample without an answer never
    agrees. 0: every pilot sample gives the same answer; 1: no sample has an answer."""
    if not answers:
        raise ValueError("agreement_difficulty needs at least one pilot answer")
    votes = Counter(a for a in answers if a is not None)
    return 1.0 - (max(votes.values()) if votes else 0) / len(answers)


def score_difficulty(scores: Sequence[float]) -> float:
    """1 - the mean score of the pilot samples (PRM scores in [0, 1], or the verifier's 0/1)."""
    if not scores:
        raise ValueError("score_difficulty needs at least one pilot score")
    return 1.0 - sum(scores) / len(scores)


def quantile_edges(scores: Sequence[float], bins: int) -> list[float]:
    """The upper edges of `bins` equal-count buckets but the last: edge i (1..bins-1) is the
    ceil(i*n/bins)-th smallest score. Repeated edges (tied scores) are merged, so ties stay together."""
    if bins < 1:
        raise ValueError(f"bins={bins}: need at least one bucket")
    s = sorted(scores)
    if not s:
        return []
    edges = [s[math.ceil(i * len(s) / bins) - 1] for i in range(1, bins)]
    edges = sorted(set(edges))
    return [e for e in edges if e < s[-1]]  # an edge at the maximum would leave the last bucket empty


def assign_buckets(scores: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Bucket of each score: the number of edges strictly below it (a score equal to an edge goes low)."""
    return [bisect.bisect_left(edges, s) for s in scores]


def _pareto(allocations: list[Allocation]) -> list[Allocation]:
    """Sorted by cost; each one strictly more accurate than every cheaper one (ties: the first kept)."""
    out: list[Allocation] = []
    for a in sorted(allocations, key=lambda a: (a.cost, -a.correct)):
        if not out or a.correct > out[-1].correct:
            out.append(a)
    return out


def frontier(table: Sequence[Mapping[Option, Cell]], cost: str = "generated") -> list[Allocation]:
    """Every allocation (one option per bucket of `table`) that no other beats at no more cost, sorted by
    cost (pilot not included). Exact: the Pareto frontier is merged bucket by bucket."""
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r}: one of {COSTS}")
    front = [Allocation((), 0, 0.0)]
    for cells in table:
        if not cells:
            raise ValueError("a bucket has no options")
        front = _pareto([Allocation(a.options + (o,), a.correct + c.correct, a.cost + getattr(c, cost))
                         for a in front for o, c in cells.items()])
    return front


def singles(table: Sequence[Mapping[Option, Cell]], cost: str = "generated") -> list[Allocation]:
    """Each option present in every bucket (the pilot excepted) used for every problem, without a pilot."""
    common = [o for o in table[0] if o != PILOT and all(o in cells for cells in table)] if table else []
    return [Allocation(tuple(o for _ in table), sum(cells[o].correct for cells in table),
                       sum(getattr(cells[o], cost) for cells in table), pilot=False) for o in common]


def allocate(table: Sequence[Mapping[Option, Cell]], pilot_cost: float, max_cost: float,
             cost: str = "generated") -> Allocation | None:
    """The most accurate allocation costing at most `max_cost` in total: the pilot (`pilot_cost`) plus one
    option per bucket, or one option everywhere with no pilot. Ties: the cheaper, then the single option.
    None when nothing fits."""
    candidates = singles(table, cost) + [Allocation(a.options, a.correct, a.cost + pilot_cost)
                                         for a in frontier(table, cost)]
    fit = [a for a in candidates if a.cost <= max_cost * (1 + 1e-9)]
    if not fit:
        return None
    return max(fit, key=lambda a: (a.correct, -a.cost, not a.pilot))


def evaluate(allocation: Allocation, table: Sequence[Mapping[Option, Cell]], pilot: Cell) -> Cell:
    """What `allocation` (chosen elsewhere) does on another split's table: its cells summed, plus the
    pilot's compute when it uses one (`pilot.correct` is ignored)."""
    if len(allocation.options) != len(table):
        raise ValueError(f"an allocation of {len(allocation.options)} buckets for a table of {len(table)}")
    cells = [cells[o] for o, cells in zip(allocation.options, table)]
    extra = pilot if allocation.pilot else Cell(0)
    return Cell(sum(c.correct for c in cells), sum(c.generated for c in cells) + extra.generated,
                sum(c.forward for c in cells) + extra.forward)
