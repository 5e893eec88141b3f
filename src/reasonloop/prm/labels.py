"""Step-labelled solutions for a process reward model: Monte-Carlo labels, outcome labels, step files.

**Monte-Carlo labels** (Math-Shepherd, Wang et al. 2024): sample solutions of a prompt from the policy,
split each into steps (`rewards.process.step_spans`), and from every step prefix let the policy finish
the solution `mc_rollouts` = K times. A step's *soft* label is the fraction of its K completions that
the task's verifier accepts (an estimate of the prefix's value under the policy); its *hard* label is
whether any of them does ("the step can still reach the right answer"). The last step of a solution
needs no rollouts: its label is the solution's own verdict. Identical prefixes of one prompt are
rolled out once, and the rollouts of many prefixes go to the engine together (`rollout_batch` prefixes
x K samples per `generate` call).

**Outcome labels** (an ORM, Cobbe et al. 2021 / Lightman et al. 2023's outcome-supervised baseline): every
step carries the solution's final verdict; no rollouts.

**Step files**: TRL's stepwise-supervision format (PRM800K-like): one row per solution with `prompt`,
`completions` (the list of steps) and `labels` (one bool per step), optionally `values` (soft labels in
[0, 1]). Rows are read through `data.io.load_rows`; rows that do not fit are skipped and counted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from reasonloop.data.io import DataError, load_rows
from reasonloop.data.records import Example
from reasonloop.rewards.process import DEFAULT_DELIMITERS, step_spans
from reasonloop.rollout.engine import RolloutEngine, SamplingConfig

log = logging.getLogger(__name__)


@dataclass
class StepExample:
    """One solution, split into steps, with a label per step."""

    prompt: str  # the text the PRM reads before the steps (the task prompt; no chat template)
    steps: list[str]  # [S] contiguous steps: they concatenate to the completion
    labels: list[bool]  # [S] hard labels: the step is (still) correct
    values: list[float]  # [S] soft labels in [0, 1] (MC: fraction of rollouts that succeed; else = labels)
    outcome: bool | None = None  # the whole solution's verdict, when known
    meta: dict[str, Any] = field(default_factory=dict)

    def targets(self, label_type: str) -> list[float]:
        """The training target of each step: the hard label as 0/1, or the soft value."""
        return [float(v) for v in self.values] if label_type == "soft" else [float(b) for b in self.labels]

    def to_row(self) -> dict[str, Any]:
        """TRL's stepwise-supervision row (+ `values`, `outcome`): what `read_step_file` reads back."""
        return {"prompt": self.prompt, "completions": self.steps, "labels": self.labels, "values": self.values,
                "outcome": self.outcome, **self.meta}


@dataclass
class LabelStats:
    """What labelling cost, for the summary (search compares compute in generated tokens)."""

    solutions: int = 0  # distinct sampled solutions kept
    duplicates: int = 0  # sampled solutions dropped as repeats of one already kept for the same prompt
    steps: int = 0
    prefixes: int = 0  # distinct (prompt, prefix) pairs rolled out
    rollouts: int = 0  # completions generated from prefixes
    generated_tokens: int = 0  # tokens the engine produced (solutions + rollouts)
    engine_calls: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


Verifier = Callable[[str, Example], bool]


def sample_solutions(engine: RolloutEngine, examples: Sequence[Example], render: Callable[[str], str], n: int,
                     sampling: SamplingConfig, generator: torch.Generator | None, batch_prompts: int,
                     stats: LabelStats) -> list[list[str]]:
    """`n` sampled completions of each example (prompt-major), repeats of one prompt dropped, empty ones too."""
    out: list[list[str]] = []
    for start in range(0, len(examples), batch_prompts):
        chunk = examples[start : start + batch_prompts]
        batch = engine.generate([render(ex.prompt) for ex in chunk], n, sampling, generator)
        stats.engine_calls += 1
        stats.generated_tokens += int(batch.completion_mask.sum())
        for i in range(len(chunk)):
            group = [c for c in batch.completions[i * n : (i + 1) * n] if c]
            kept = list(dict.fromkeys(group))
            stats.duplicates += len(group) - len(kept)
            out.append(kept)
    return out


def rollout_successes(engine: RolloutEngine, queries: Sequence[tuple[Example, str]], render: Callable[[str], str],
                      k: int, sampling: SamplingConfig, generator: torch.Generator | None, batch_prompts: int,
                      is_correct: Verifier, stats: LabelStats) -> list[int]:
    """For each (example, prefix): how many of `k` completions continued from `render(prompt) + prefix`
    make `prefix + continuation` a solution the verifier accepts. `batch_prompts` prefixes per call."""
    successes: list[int] = []
    for start in range(0, len(queries), batch_prompts):
        chunk = queries[start : start + batch_prompts]
        batch = engine.generate([render(ex.prompt) + prefix for ex, prefix in chunk], k, sampling, generator)
        stats.engine_calls += 1
        stats.rollouts += len(chunk) * k
        stats.generated_tokens += int(batch.completion_mask.sum())
        for i, (ex, prefix) in enumerate(chunk):
            successes.append(sum(is_correct(prefix + c, ex) for c in batch.completions[i * k : (i + 1) * k]))
    return successes


def mc_labels(engine: RolloutEngine, examples: Sequence[Example], is_correct: Verifier, *,
              render: Callable[[str], str] = lambda p: p, solutions_per_prompt: int = 4, mc_rollouts: int = 4,
              sampling: SamplingConfig | None = None, delimiters: Sequence[str] = DEFAULT_DELIMITERS,
              generator: torch.Generator | None = None, batch_prompts: int = 64, outcome_only: bool = False,
              given: Sequence[Sequence[str] | None] | None = None) -> tuple[list[StepExample], LabelStats]:
    """Sampled solutions of `examples` with Math-Shepherd step labels (see the module docstring), or with
    outcome labels on every step when `outcome_only` (no rollouts). `given[i]`, when not None, are example
    i's solutions instead of samples (e.g. traces with planted errors): labelled the same way."""
    sampling = sampling or SamplingConfig()
    stats = LabelStats()
    given = list(given) if given is not None else [None] * len(examples)
    if len(given) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(given)} given solution lists")
    to_sample = [i for i, g in enumerate(given) if g is None]
    sampled = iter(sample_solutions(engine, [examples[i] for i in to_sample], render, solutions_per_prompt, sampling,
                                    generator, batch_prompts, stats) if to_sample else [])
    solutions = [list(dict.fromkeys(g)) if g is not None else next(sampled) for g in given]
    split: list[tuple[int, list[str], bool]] = []  # (example index, steps, verdict)
    for i, (ex, completions) in enumerate(zip(examples, solutions)):
        for c in completions:
            split.append((i, [s.text for s in step_spans(c, delimiters)], is_correct(c, ex)))
    stats.solutions = len(split)
    stats.steps = sum(len(steps) for _, steps, _ in split)
    value_of: dict[tuple[int, str], float] = {}
    if not outcome_only:
        queries = list(dict.fromkeys((i, "".join(steps[: k + 1])) for i, steps, _ in split
                                     for k in range(len(steps) - 1)))
        wins = rollout_successes(engine, [(examples[i], prefix) for i, prefix in queries], render, mc_rollouts,
                                 sampling, generator, batch_prompts, is_correct, stats)
        stats.prefixes = len(queries)
        value_of = {q: w / mc_rollouts for q, w in zip(queries, wins)}
    out = []
    for i, steps, outcome in split:
        if outcome_only:
            values = [float(outcome)] * len(steps)
        else:
            values = [value_of[(i, "".join(steps[: k + 1]))] for k in range(len(steps) - 1)] + [float(outcome)]
        labels = [v > 0 for v in values[:-1]] + [outcome]
        out.append(StepExample(examples[i].prompt, steps, labels, values, outcome, {"id": examples[i].id}))
    return out, stats


# -- step files ------------------------------------------------------------------------------------------


def _label_list(value: Any, n: int) -> list[bool] | None:
    if not isinstance(value, list) or len(value) != n:
        return None
    if all(isinstance(v, bool) for v in value):
        return list(value)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v in (0, 1) for v in value):
        return [bool(v) for v in value]
    return None


def _value_list(value: Any, n: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) != n:
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1 for v in value):
        return None
    return [float(v) for v in value]


def step_examples(rows: Sequence[dict], source: str, prompt_field: str = "prompt", steps_field: str = "completions",
                  labels_field: str = "labels", values_field: str = "values") -> tuple[list[StepExample], Counter]:
    """Rows in TRL's stepwise-supervision format as `StepExample`s. A row is skipped, and counted by reason,
    when its prompt is not a string, its steps are not a non-empty list of strings, or its labels are not one
    bool (or 0/1) per step; `values`, when present, must be one number in [0, 1] per step. No usable row is
    a DataError."""
    kept, skips = [], Counter()
    for row in rows:
        prompt, steps = row.get(prompt_field), row.get(steps_field)
        if not isinstance(prompt, str):
            skips[f"no string {prompt_field!r}"] += 1
            continue
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            skips[f"{steps_field!r} not a non-empty list of strings"] += 1
            continue
        labels = _label_list(row.get(labels_field), len(steps))
        if labels is None:
            skips[f"{labels_field!r} not one bool per step"] += 1
            continue
        values = [float(b) for b in labels]
        if row.get(values_field) is not None:
            soft = _value_list(row.get(values_field), len(steps))
            if soft is None:
                skips[f"{values_field!r} not one number in [0, 1] per step"] += 1
                continue
            values = soft
        outcome = row.get("outcome")
        kept.append(StepExample(prompt, list(steps), labels, values, outcome if isinstance(outcome, bool) else None))
    if skips:
        log.warning("%s: skipped %d of %d rows: %s", source, sum(skips.values()), len(rows),
                    ", ".join(f"{n} {why}" for why, n in skips.items()))
    if not kept:
        raise DataError(f"{source}: no usable step rows ({', '.join(f'{n} {w}' for w, n in skips.items())}); "
                        f"each row needs a string {prompt_field!r}, a list of step strings {steps_field!r} and one "
                        f"bool per step in {labels_field!r}")
    return kept, skips


def read_step_file(source: str, **fields: str) -> tuple[list[StepExample], Counter]:
    """`step_examples` of a file, `save_to_disk` directory or hub id (through `data.io.load_rows`, which
    skips and counts lines that are not JSON objects)."""
    return step_examples(load_rows(source), source, **fields)

