"""Per-step (process) reward hooks: split a completion into steps, score each, aggregate.

A process reward model plugs in as a `StepScorer`: anything with
`score_steps(prompt, steps) -> list[float]` (one score per step, e.g. a PRM's probability that the
step is correct). `process_reward` turns it into an ordinary reward function; `step_rewards` keeps the
per-step scores with their character spans so a trainer can place them on tokens.

Aggregations: `min` (a chain is as good as its worst step; Lightman et al. 2023), `last`, `mean`,
`prod` (all steps correct, if scores are probabilities).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from reasonloop.rewards.answer_format import THINK_RE

AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "min": min,
    "last": lambda s: s[-1],
    "mean": lambda s: sum(s) / len(s),
    "prod": math.prod,
}


class StepScorer(Protocol):
    def score_steps(self, prompt: str, steps: list[str]) -> list[float]: ...


@dataclass(frozen=True)
class Step:
    text: str
    start: int  # character span in the completion
    end: int


def split_steps(completion: str, mode: str = "lines") -> list[Step]:
    """Steps of a completion: `lines` (non-empty lines), `paragraphs` (blank-line separated), or
    `think_lines` (lines inside the first `<think>` block, falling back to the whole text)."""
    offset, text = 0, completion
    if mode == "think_lines":
        m = THINK_RE.search(completion)
        if m:
            offset, text = m.start(1), m.group(1)
        mode = "lines"
    separators = {"lines": r"\n+", "paragraphs": r"\n\s*\n"}
    if mode not in separators:
        raise ValueError(f"unknown split mode {mode!r}; use lines, paragraphs or think_lines")
    steps, pos = [], 0
    for m in list(re.finditer(separators[mode], text)) + [None]:
        end = m.start() if m else len(text)
        chunk = text[pos:end]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            steps.append(Step(chunk.strip(), offset + pos + lead, offset + pos + lead + len(chunk.strip())))
        pos = m.end() if m else len(text)
    return steps


DEFAULT_DELIMITERS = (";", "</think>")  # the embedded arithmetic task's step ends


def step_spans(completion: str, delimiters: Sequence[str] = DEFAULT_DELIMITERS) -> list[Step]:
    """Contiguous steps of a (possibly partial) completion: each ends just after a delimiter, which it
    keeps; non-empty text after the last delimiter is the last step. The steps' texts concatenate back to
    `completion`, so a PRM reading `prompt + completion` once finds each step's verdict at the step's last
    token (TRL's PRM convention, with the delimiter as the step separator). Search and process rewards share
    this split: `<think>17+4=21;21-9=12</think><answer>12</answer>` has three steps."""
    if not delimiters or not all(delimiters):
        raise ValueError("step delimiters must be non-empty strings")
    pattern = "|".join(re.escape(d) for d in sorted(delimiters, key=len, reverse=True))
    steps, pos = [], 0
    for m in re.finditer(pattern, completion):
        steps.append(Step(completion[pos : m.end()], pos, m.end()))
        pos = m.end()
    if pos < len(completion):
        steps.append(Step(completion[pos:], pos, len(completion)))
    return steps


def aggregate(scores: Sequence[float], how: str) -> float | None:
    """One number from step scores; None for a completion with no steps (not applicable)."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregation {how!r}; use {sorted(AGGREGATES)}")
    return AGGREGATES[how](scores) if scores else None


def step_rewards(scorer: StepScorer, prompt: str, completion: str, split: str = "lines") -> list[tuple[Step, float]]:
    """Each step with its score (checked: one score per step)."""
    steps = split_steps(completion, split)
    scores = scorer.score_steps(prompt, [s.text for s in steps]) if steps else []
    if len(scores) != len(steps):
        raise ValueError(f"step scorer returned {len(scores)} scores for {len(steps)} steps")
    return list(zip(steps, scores))


def process_reward(scorer: StepScorer, how: str = "min", split: str = "lines") -> Callable[..., list[float | None]]:
    """A TRL-signature reward function aggregating a step scorer's per-step scores."""
    aggregate([0.0], how)  # fail fast on a bad name

    def reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
        return [aggregate([s for _, s in step_rewards(scorer, p, c, split)], how) for p, c in zip(prompts, completions)]

    return reward
