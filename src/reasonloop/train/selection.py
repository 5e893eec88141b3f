"""A validation set beside the held-out one, and the run's best step on it (`rl` `val_n`, `keep_best`).

RL can lift sampled accuracy while it narrows the samples: pass@k falls a little at every step and greedy
accuracy stops rising (docs/curriculum.md). A validation set lets a run keep the step that scores best on a
chosen metric, as `transformers.Trainer`'s `load_best_model_at_end` does; the held-out problems are never
looked at to choose. Steps of one run differ by a few problems, which a validation set of a few hundred does not
resolve, so by default (`keep_best_paired`) the best step replaces the last one only when it is better on the
validation problems by a 95% paired-bootstrap interval above 0 (train/paired.py): otherwise the pick is noise.

The validation problems come from the test split, disjoint from the held-out ones, not from the training
pool: a train split keeps the generator's repeats (tasks/reasoning_gym.py), and removing every copy of a few
hundred prompts from it empties the small, frequent corners first (reasoning-gym chain_sum with 2-4 terms:
the pool's share of two-term problems fell from 0.305 to 0.215 when 186 validation prompts were taken out).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from reasonloop.config import ConfigError
from reasonloop.data.records import Example
from reasonloop.train.paired import bootstrap_interval, per_problem, problem_columns


def validation_set(held_out: list[Example], candidates: list[Example], n: int) -> list[Example]:
    """The first `n` of `candidates` (test-split problems) deduplicated by prompt and without the held-out
    prompts; a ConfigError when none is left."""
    taken = {ex.prompt for ex in held_out}
    validation = [ex for ex in {ex.prompt: ex for ex in candidates}.values() if ex.prompt not in taken][:n]
    if not validation:
        raise ConfigError(f"val_n: the task's test split has no problem left beside the {len(held_out)} held-out "
                          "ones; lower eval_n, use a task with a larger test split, or set val_n=0 keep_best=''")
    return validation


def selection_terms(spec: str, k: int) -> list[str]:
    """The metric names of keep_best's '+'-sum (`pass@1_greedy+pass@8`; `pass@k` stands for pass@<k>), checked
    against what an evaluation with k samples per problem reports per problem."""
    known = ["pass@1_greedy"] + (["pass@1"] if k > 0 else []) + ([f"pass@{k}"] if k > 1 else [])
    terms = [f"pass@{k}" if t.strip() == "pass@k" else t.strip() for t in spec.split("+")]
    bad = [t for t in terms if t not in known]
    if bad:
        raise ConfigError(f"keep_best={spec!r}: {', '.join(map(repr, bad))} is not a validation metric; with "
                          f"eval_k={k} they are {', '.join(known)} (or a '+'-sum of them; pass@k is pass@<eval_k>)")
    return terms


def problem_values(rows: list[dict[str, Any]], terms: list[str], k: int) -> np.ndarray:
    """Per validation problem (in a fixed order), the sum of `terms` from an evaluation's sample rows; their mean
    is the sum of the table's values."""
    stats = per_problem(rows)
    columns = problem_columns(stats, sorted(stats), k)
    return sum((columns[t] for t in terms), np.zeros(len(stats)))


class BestWeights:
    """The best step seen so far by `offer` (the highest mean value; strictly higher only, so the earliest wins a
    tie), its per-problem values and a CPU copy of its weights; saved and restored with the run's checkpoints
    (state_dict / load_state_dict)."""

    def __init__(self) -> None:
        self.step = -1
        self.values = np.zeros(0)
        self.weights: dict[str, torch.Tensor] | None = None

    @property
    def value(self) -> float:
        return float(self.values.mean()) if len(self.values) else -math.inf

    def offer(self, step: int, values: np.ndarray, model: torch.nn.Module) -> bool:
        if not float(values.mean()) > self.value:
            return False
        self.step, self.values = step, np.asarray(values, dtype=float)
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def beats(self, values: np.ndarray, seed: int = 0) -> tuple[bool, tuple[float, float]]:
        """Whether the best step is better than `values` (another step's, on the same problems) beyond the
        validation set's noise: the 95% paired-bootstrap interval of the difference lies above 0."""
        lo, hi = bootstrap_interval(self.values - values, seed=seed)
        return lo > 0, (lo, hi)

    def restore(self, model: torch.nn.Module) -> None:
        assert self.weights is not None, "offer() a step first"
        model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "values": self.values.tolist(), "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.values, self.weights = state["step"], np.asarray(state["values"], dtype=float), state["weights"]
