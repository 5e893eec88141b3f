"""What the R1 recipes read in a thought: marker counters and the notation-consistency reward.

A *thought* is the text of a completion's `<think>` block(s) (`rewards.answer_format.think_blocks`).

Marker counters (`MarkerCounter`) are what DeepSeek-R1-Zero's report tracks as the "aha moment": how
often a thought verifies itself ("wait", "let me check") or backtracks ("actually", "let me try
again"). The patterns are case-insensitive regular expressions, configurable (`r1_zero
verify_patterns=[...]`); a completion counts once per kind when any pattern of that kind matches in
its thought. The embedded tiny models write no words, so two counters read the task's own notation
too (`step_counts`): a *repeated* step (an earlier equation written again, out of the chain's order: the
thought re-checks a step) and a *revised* step (an earlier left side written again with another result:
the thought went back and changed it).

The notation-consistency reward is the embedded analogue of R1's language-consistency reward (the
proportion of target-language words in the chain of thought). It measures how much of the thought is
written in the task's notation: the thought is split into segments at `;`, and the reward is the
fraction of non-empty segments that are one equation of the notation (by default the arithmetic
task's: integers joined by `+`/`-`, then `=` and an integer, e.g. `17+4=21` or the lazy `17+4-9=12`).
It does **not** check that the equations are true (the accuracy reward checks the answer, a PRM the
steps); a completion without a thought is outside its scope and scores None (counted as 0, as for
code answers, which have no thought).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reasonloop.rewards.answer_format import parse_strict, think_blocks

# R1-Zero's report quotes "wait", re-checking and re-evaluation; these are the English markers of both kinds
DEFAULT_VERIFY_PATTERNS = (r"\bwait\b", r"\bverify\b", r"\bre-?check", r"\bdouble[- ]check", r"\blet me check\b",
                           r"\bconfirm\b")
DEFAULT_BACKTRACK_PATTERNS = (r"\bwait\b", r"\bactually\b", r"\bmistake\b", r"\btry again\b", r"\bre-?consider",
                              r"\bre-?evaluate", r"\binstead\b", r"\bhmm\b")

ARITHMETIC_STEP = r"\d+(?:[+-]\d+)+=\d+"
"""One equation of the arithmetic task's notation: `17+4=21`, or a whole chain `17+4-9=12`."""
STEP_SEPARATOR = ";"


def thought_of(completion: str) -> str | None:
    """The completion's thought: its `<think>` blocks joined by newlines; None when it has none."""
    blocks = think_blocks(completion)
    return "\n".join(blocks) if blocks else None


def segments(thought: str, separator: str = STEP_SEPARATOR) -> list[str]:
    """The thought's non-empty segments between separators, stripped."""
    return [s.strip() for s in thought.split(separator) if s.strip()]


def notation_consistency(thought: str, step_pattern: str = ARITHMETIC_STEP, separator: str = STEP_SEPARATOR) -> float:
    """The fraction of the thought's segments that are one equation of the notation (`step_pattern`, matched
    whole); 0.0 for a thought with no segment."""
    parts = segments(thought, separator)
    if not parts:
        return 0.0
    step = re.compile(step_pattern)
    return sum(step.fullmatch(p) is not None for p in parts) / len(parts)


def notation_consistency_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
    """The arithmetic notation-consistency of each completion's thought (TRL's reward signature); None for a
    completion without a thought (not applicable: counted as 0 in the sum, e.g. a code answer)."""
    out: list[float | None] = []
    for c in completions:
        thought = thought_of(c)
        out.append(None if thought is None else notation_consistency(thought))
    return out


@dataclass(frozen=True)
class StepCounts:
    """Equations in a thought, and how many of them go back to an earlier one."""

    steps: int
    repeated: int  # an earlier equation written again, same result (a re-check)
    revised: int  # an earlier left side written again with another result (a correction)


LEADING_INT = re.compile(r"^\d+")


def step_counts(thought: str, separator: str = STEP_SEPARATOR) -> StepCounts:
    """Count the thought's `a=b` segments, and those that go back: an equation that does not continue the chain
    (its first number is not the previous equation's result) and whose left side was written before is a repeat
    (same result) or a revision (another result). A chain step is never one, even when the problem repeats an
    operation (`3-3=0;0+3=3;3-3=0` has no repeat)."""
    seen: dict[str, set[str]] = {}
    steps = repeated = revised = 0
    previous: str | None = None
    for part in segments(thought, separator):
        left, eq, right = part.partition("=")
        if not eq:
            continue
        left, right = left.strip(), right.strip()
        steps += 1
        first = LEADING_INT.match(left)
        continues = previous is not None and first is not None and first.group() == previous
        if left in seen and not continues:
            if right in seen[left]:
                repeated += 1
            else:
                revised += 1
        seen.setdefault(left, set()).add(right)
        previous = right
    return StepCounts(steps, repeated, revised)


class MarkerCounter:
    """Per-batch rates of self-verification and backtracking in the completions' thoughts (module docstring)."""

    def __init__(self, verify_patterns: Sequence[str] = DEFAULT_VERIFY_PATTERNS,
                 backtrack_patterns: Sequence[str] = DEFAULT_BACKTRACK_PATTERNS):
        self.verify = [re.compile(p, re.I) for p in verify_patterns]
        self.backtrack = [re.compile(p, re.I) for p in backtrack_patterns]

    @staticmethod
    def _any(patterns: list[re.Pattern], text: str) -> bool:
        return any(p.search(text) for p in patterns)

    def has_verify(self, thought: str) -> bool:
        return self._any(self.verify, thought)

    def has_backtrack(self, thought: str) -> bool:
        return self._any(self.backtrack, thought)

    def metrics(self, completions: Sequence[str]) -> dict[str, float]:
        """Rates over `completions` (each in [0, 1], a completion without a thought counting as no marker),
        mean lengths in characters, and the strict-format rate:

        - `verify_rate`, `backtrack_rate`: completions whose thought matches a pattern of that kind;
        - `repeat_step_rate`, `revise_step_rate`: completions with a repeated / revised equation;
        - `think_steps`: mean equations per thought; `think_chars`, `response_chars`: mean lengths;
        - `format_rate`: completions in the strict `<think>..</think><answer>..</answer>` shape.
        """
        n = max(len(completions), 1)
        totals = dict.fromkeys(("verify_rate", "backtrack_rate", "repeat_step_rate", "revise_step_rate", "think_steps",
                                "think_chars", "response_chars", "format_rate"), 0.0)
        for c in completions:
            totals["response_chars"] += len(c)
            totals["format_rate"] += parse_strict(c) is not None
            thought = thought_of(c)
            if thought is None:
                continue
            counts = step_counts(thought)
            totals["verify_rate"] += self.has_verify(thought)
            totals["backtrack_rate"] += self.has_backtrack(thought)
            totals["repeat_step_rate"] += counts.repeated > 0
            totals["revise_step_rate"] += counts.revised > 0
            totals["think_steps"] += counts.steps
            totals["think_chars"] += len(thought)
        return {k: v / n for k, v in totals.items()}
