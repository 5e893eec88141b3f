"""What several frameworks share: prompt features, forced openings of an arithmetic trace, the run's summary."""

from __future__ import annotations

import re
from typing import Any

PROMPT_CHAIN = re.compile(r"Q:\s*(\d+)((?:[+-]\d+)*)=\?")
NUMBER = re.compile(r"\d+")
OPERATOR = re.compile(r"(?<=[\d)\s])[+\-*/]")

FEATURES = ("bias", "numbers", "operations", "digits", "length")


def prompt_features(prompt: str) -> list[float]:
    """A small, task-agnostic description of a prompt: [1, numbers/4, operations/4, longest number's digits/2,
    characters/32] (the arithmetic levels differ in operations and digits)."""
    numbers = NUMBER.findall(prompt)
    return [1.0, len(numbers) / 4, len(OPERATOR.findall(prompt)) / 4,
            max((len(n) for n in numbers), default=0) / 2, len(prompt) / 32]


def chain_terms(prompt: str) -> tuple[str, list[str]] | None:
    """('17', ['+4', '-9']) for an arithmetic prompt `Q: 17+4-9=?`, None for any other prompt."""
    m = PROMPT_CHAIN.search(prompt)
    if m is None:
        return None
    return m.group(1), re.findall(r"[+-]\d+", m.group(2))


def opening(prompt: str, chunk: int) -> str:
    """The forced start of a trace whose first step covers `chunk` operations: `<think>17+4=` (chunk 1, the
    careful step-by-step trace), `<think>17+4-9=` (chunk >= the number of operations: the whole chain at once,
    a direct answer). chunk 0 forces nothing (''). Only for arithmetic prompts (ValueError otherwise)."""
    if chunk == 0:
        return ""
    terms = chain_terms(prompt)
    if terms is None:
        raise ValueError(f"a forced opening needs an arithmetic prompt (Q: a+b-c=?), got {prompt!r}")
    head, ops = terms
    return "<think>" + head + "".join(ops[: max(1, chunk)]) + "="


def with_extra(trainer: Any, result: dict, extra: dict, samples: int | None = None) -> dict:
    """The trainer's summary with the framework's own measurements (`extra`) and, when it generated a
    different number of training samples than steps * prompts_per_step * group_size, that count; rewritten
    to summary.json."""
    result = {**result, "extra": extra}
    if samples is not None:
        result["samples"] = samples
    trainer.run.write_json("summary.json", result)
    return result
