"""pass@k and maj@k from n samples per problem."""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, "Evaluating LLMs trained on code"): 1 - C(n-c, k) / C(n, k).

    n samples of which c are correct; the probability that a random k-subset holds a correct one.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> bool:
    """maj@k: is the most frequent extracted answer (ties broken by first occurrence) a correct one?

    `answers[i]` is the normalised answer of sample i (None when none was extracted; never voted for).
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(ok for a, ok in zip(answers, correct) if a == winner)
