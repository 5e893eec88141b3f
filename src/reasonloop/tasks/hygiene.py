"""Data hygiene: stable splits, deduplication, length filters and train/eval overlap checks.

Everything keys on `normalize_text(prompt)` so that whitespace, case and punctuation differences do
not hide a duplicate. Overlap follows the GPT-3 contamination check: any shared word n-gram (n=13 by
default) between a train and an eval prompt flags the pair.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from reasonloop.data.records import Example


def normalize_text(text: str) -> str:
    """Lower-case words and numbers only: `What is 2+2?` and `what is 2 + 2` collide."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def stable_fraction(text: str) -> float:
    """A deterministic position in [0, 1) for a prompt (sha1, not `hash()`, which is salted per run)."""
    digest = hashlib.sha1(normalize_text(text).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_test_split(prompt: str, test_frac: float) -> bool:
    """Content-addressed split: the same problem lands in the same split forever, whatever the seed,
    the row order or the sample size, so "train" and "test" can never share a problem."""
    return stable_fraction(prompt) < test_frac


def dedup(examples: Sequence[Example], key: Callable[[Example], str] = lambda e: normalize_text(e.prompt)) -> list[Example]:
    """Drop later examples whose key repeats an earlier one (order preserved)."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        k = key(ex)
        if k not in seen:
            seen.add(k)
            out.append(ex)
    return out


def length_filter(
    examples: Sequence[Example], min_len: int = 0, max_len: int | None = None, length: Callable[[str], int] = len
) -> list[Example]:
    """Keep prompts with `min_len <= length(prompt) <= max_len`; pass a tokenizer's length for tokens."""
    return [e for e in examples if min_len <= length(e.prompt) and (max_len is None or length(e.prompt) <= max_len)]


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalize_text(text).split()
    if len(words) < n:  # short prompts are compared whole
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class OverlapReport:
    exact: list[int]  # indices of train examples whose normalised prompt equals an eval prompt
    ngram: list[int]  # indices of train examples sharing a word n-gram with an eval prompt (superset)
    num_train: int

    @property
    def contaminated_fraction(self) -> float:
        return len(self.ngram) / self.num_train if self.num_train else 0.0


def overlap(train: Sequence[Example], evaluation: Sequence[Example], n: int = 13) -> OverlapReport:
    """Which train prompts leak eval prompts, exactly or by a shared n-gram."""
    eval_exact = {normalize_text(e.prompt) for e in evaluation}
    eval_grams: set[tuple[str, ...]] = set()
    for e in evaluation:
        eval_grams |= word_ngrams(e.prompt, n)
    exact = [i for i, e in enumerate(train) if normalize_text(e.prompt) in eval_exact]
    ngram = [i for i, e in enumerate(train) if word_ngrams(e.prompt, n) & eval_grams]
    return OverlapReport(exact=exact, ngram=ngram, num_train=len(train))


def decontaminate(train: Sequence[Example], evaluation: Sequence[Example], n: int = 13) -> list[Example]:
    """Train examples with every n-gram overlap against `evaluation` removed."""
    flagged = set(overlap(train, evaluation, n).ngram)
    return [e for i, e in enumerate(train) if i not in flagged]
