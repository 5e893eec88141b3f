"""Reward composition: plain callables, TRL's signature, weighted sums with every component kept.

A reward function is any callable

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

where `columns` holds the example's answer and metadata as lists aligned with `completions` (TRL users
can bring their functions unchanged). `None` means "not applicable to this row" and counts as 0 in
the sum. A function that raises, returns the wrong length, or returns NaN/inf on some rows does not
crash a run: the affected rows score 0 for that component and the failure is counted in
`RewardResult.errors`. A function that fails on *every* row of the first batch it sees, or of
`FAILED_BATCHES_LIMIT` consecutive batches, is broken rather than unlucky: `compute_rewards` raises a
`RewardError` naming it and its first exception, instead of training on zeros for the whole run.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from reasonloop.data.records import Example
from reasonloop.errors import UserError

log = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float | None]]


FAILED_BATCHES_LIMIT = 3  # consecutive batches on which a reward fails on every row before the run stops


class RewardError(UserError):
    """A reward function that fails on every row, batch after batch: fix it or remove it."""


@dataclass
class RewardHealth:
    """A reward function's failure record across the calls of one run (kept on its RewardSpec)."""

    batches: int = 0
    failed_in_a_row: int = 0
    first_error: str = ""

    def record(self, name: str, failed_rows: int, rows: int, error: str) -> None:
        """Count one batch; raise RewardError when the function has failed on every row of the first
        batch or of FAILED_BATCHES_LIMIT batches in a row."""
        self.batches += 1
        self.first_error = self.first_error or error
        whole = rows > 0 and failed_rows == rows
        self.failed_in_a_row = self.failed_in_a_row + 1 if whole else 0
        if whole and (self.batches == 1 or self.failed_in_a_row >= FAILED_BATCHES_LIMIT):
            span = "the first batch" if self.batches == 1 else f"{self.failed_in_a_row} batches in a row"
            raise RewardError(f"reward function {name!r} failed on every row of {span} "
                              f"(first failure: {self.first_error or 'no usable value'}); fix it or remove it")


@dataclass(frozen=True)
class RewardSpec:
    name: str
    fn: RewardFn
    weight: float = 1.0
    health: RewardHealth = field(default_factory=RewardHealth, compare=False, repr=False)


@dataclass
class RewardResult:
    total: torch.Tensor  # [N] weighted sum of components
    components: dict[str, torch.Tensor]  # name -> [N] unweighted component values
    errors: dict[str, int] = field(default_factory=dict)  # name -> rows that failed (raised/NaN)


def example_columns(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """Dataset columns as TRL passes them: `answer` plus every meta key, one list entry per row."""
    keys: list[str] = []
    for ex in examples:
        keys.extend(k for k in ex.meta if k not in keys)
    cols: dict[str, list[Any]] = {"answer": [ex.answer for ex in examples]}
    for k in keys:
        cols[k] = [ex.meta.get(k) for ex in examples]
    return cols


def load_function(spec: str, what: str = "reward function") -> Callable[..., Any]:
    """'package.module:function' -> the function, for functions named in a config (reward functions,
    judge hooks); modules in the working directory import too, after installed ones.

    Raises ValueError naming `what` went wrong: a malformed spec, a module that does not import, a
    missing attribute, or one that is not callable.
    """
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"a {what} is 'module:function', got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:  # the `reasonloop` script does not put it there
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {spec!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"{what} {spec!r} is not callable")
    return fn


def compute_rewards(
    specs: Sequence[RewardSpec], completions: Sequence[str], examples: Sequence[Example]
) -> RewardResult:
    """Score `completions[i]` against `examples[i]` with every spec; never raises for a bad reward fn."""
    n = len(completions)
    if len(examples) != n:
        raise ValueError(f"{n} completions but {len(examples)} examples")
    prompts = [ex.prompt for ex in examples]
    columns = example_columns(examples)
    total = torch.zeros(n)
    components: dict[str, torch.Tensor] = {}
    errors: dict[str, int] = {}
    for spec in specs:
        values, bad, error = _call_reward(spec, prompts, list(completions), columns)
        spec.health.record(spec.name, bad, n, error)
        if bad:
            errors[spec.name] = bad
        components[spec.name] = values
        total += spec.weight * values
    return RewardResult(total=total, components=components, errors=errors)


def _call_reward(spec: RewardSpec, prompts, completions, columns) -> tuple[torch.Tensor, int, str]:
    """(values [N], failed rows, the first failure as text) of one call of one reward function."""
    n = len(completions)
    try:
        raw = list(spec.fn(prompts=prompts, completions=completions, **columns))
    except RewardError:
        raise
    except Exception as exc:  # a user's reward fn must not kill the run on one bad batch
        log.warning("reward %r raised %s: %s; scoring its %d rows 0", spec.name, type(exc).__name__, exc, n)
        return torch.zeros(n), n, f"{type(exc).__name__}: {exc}"
    if len(raw) != n:
        log.warning("reward %r returned %d values for %d rows; scoring them 0", spec.name, len(raw), n)
        return torch.zeros(n), n, f"returned {len(raw)} values for {n} rows"
    out = torch.zeros(n)
    bad = 0
    first = ""
    for i, v in enumerate(raw):
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f):
            bad += 1
            first = first or f"returned {v!r}"
            continue
        out[i] = f
    if bad:
        log.warning("reward %r returned %d non-finite values; scored 0", spec.name, bad)
    return out, bad, first
