"""The answer format every reasonloop prompt asks for: `<think>...</think><answer>...</answer>`.

One module owns its parsing, so the tasks' verifiers, the math grader, the code extractor and the
format rewards cannot drift apart. Two shapes are recognised:

- **strict** (the embedded tasks' shape, which their corpus teaches): after stripping outer whitespace,
  exactly `<think>T</think><answer>A</answer>` with non-empty T and a non-empty A free of `<`;
- **lenient** (for real models): whitespace allowed around and between the blocks, a `<think>` holding
  some non-space text, then exactly one non-empty `<answer>` block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.S)
STRICT_RE = re.compile(r"^<think>(?P<think>.+?)</think><answer>(?P<answer>[^<]+)</answer>$", re.S)
LENIENT_RE = re.compile(r"^\s*<think>(?=.*\S.*</think>).*?</think>\s*<answer>(?:(?!<answer>).)+?</answer>\s*$", re.S)


class Parsed(NamedTuple):
    think: str
    answer: str


def answer_blocks(completion: str) -> list[str]:
    """The contents of every `<answer>` block, in order."""
    return ANSWER_RE.findall(completion)


def think_blocks(completion: str) -> list[str]:
    """The contents of every `<think>` block, in order."""
    return THINK_RE.findall(completion)


def single_answer(completion: str) -> str | None:
    """The content of the one `<answer>` block; None when there is none or more than one."""
    found = answer_blocks(completion)
    return found[0] if len(found) == 1 else None


def last_answer(completion: str) -> str | None:
    """The content of the last `<answer>` block, or None."""
    found = answer_blocks(completion)
    return found[-1] if found else None


def parse_strict(completion: str) -> Parsed | None:
    """(think, answer) of a completion in the strict shape, else None."""
    match = STRICT_RE.match(completion.strip())
    return Parsed(match["think"], match["answer"]) if match else None


def is_lenient(completion: str) -> bool:
    """True when the completion is in the lenient shape."""
    return LENIENT_RE.match(completion) is not None


def strict_format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 for a completion in the strict shape, else 0.0 (TRL's reward signature)."""
    return [float(parse_strict(c) is not None) for c in completions]


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 for a completion in the lenient shape, else 0.0 (TRL's reward signature)."""
    return [float(is_lenient(c)) for c in completions]
