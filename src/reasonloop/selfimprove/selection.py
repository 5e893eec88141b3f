"""Selection rules of the self-improvement loops: small pure functions over scored samples.

A `Sample` is one completion of one prompt with its reward; `group` names the prompt (prompt-major
order does not matter here). Every rule returns the kept samples in input order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Sample:
    """A scored completion. `prompt` is the raw task prompt (never the rendered or hinted one)."""

    prompt: str
    completion: str
    reward: float
    correct: bool = False
    group: str = ""  # the example id; samples of one prompt share it
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def normalise_completion(text: str) -> str:
    """The text used to detect duplicates: surrounding whitespace and inner runs of spaces ignored."""
    return " ".join(text.split())


def dedup(samples: Sequence[Sample], key: Callable[[Sample], Hashable] | None = None) -> tuple[list[Sample], int]:
    """Drop repeats of (prompt, normalised completion); the first occurrence is kept.

    Returns (kept, number dropped). Duplicates would otherwise up-weight the model's most confident
    (and least informative) samples in the fine-tuning set.
    """
    key = key or (lambda s: (s.prompt, normalise_completion(s.completion)))
    seen: set = set()
    kept = []
    for s in samples:
        k = key(s)
        if k not in seen:
            seen.add(k)
            kept.append(s)
    return kept, len(samples) - len(kept)


def above_threshold(samples: Sequence[Sample], threshold: float) -> list[Sample]:
    """Rejection sampling (RFT, Yuan et al. 2023; ReST-EM's E-step with a binary reward): keep
    samples whose reward is >= threshold."""
    return [s for s in samples if s.reward >= threshold]


def correct_only(samples: Sequence[Sample]) -> list[Sample]:
    """Keep samples the task verifier accepts (the binary-reward filter of STaR and ReST-EM)."""
    return [s for s in samples if s.correct]


def top_k_per_prompt(samples: Sequence[Sample], k: int, min_reward: float | None = None) -> list[Sample]:
    """RAFT (Dong et al. 2023): per prompt, the k highest-reward samples (ties: earlier first),
    optionally only those with reward >= min_reward. Output keeps input order."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if min_reward is None or s.reward >= min_reward:
            by_group[s.group].append(i)
    keep: set[int] = set()
    for idx in by_group.values():
        keep.update(sorted(idx, key=lambda i: (-samples[i].reward, i))[:k])
    return [s for i, s in enumerate(samples) if i in keep]


def rising_thresholds(start: float, stop: float, steps: int) -> list[float]:
    """ReST's improve-step schedule (Gulcehre et al. 2023): `steps` thresholds from `start` to `stop`
    inclusive, evenly spaced and non-decreasing; one threshold per Improve step."""
    if steps <= 0:
        raise ValueError("steps must be > 0")
    if stop < start:
        raise ValueError(f"thresholds must rise: start {start} > stop {stop}")
    if steps == 1:
        return [start]
    return [start + (stop - start) * i / (steps - 1) for i in range(steps)]


def group_by_prompt(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.group].append(s)
    return dict(out)


def best_worst_pairs(samples: Sequence[Sample], min_gap: float = 0.0, max_pairs_per_prompt: int = 1) -> list[tuple[Sample, Sample]]:
    """Preference pairs from one policy's samples (online / iterative DPO, Xu et al. 2023; Guo et al.
    2024): per prompt, chosen = highest reward, rejected = lowest, when the gap is > min_gap and the
    texts differ. With `max_pairs_per_prompt` > 1, further pairs match the next-best with the
    next-worst. Prompts whose samples all score the same give no pair."""
    pairs = []
    for group in group_by_prompt(samples).values():
        ranked = sorted(group, key=lambda s: -s.reward)
        for j in range(min(max_pairs_per_prompt, len(ranked) // 2)):
            hi, lo = ranked[j], ranked[-1 - j]
            if hi.reward - lo.reward > min_gap and normalise_completion(hi.completion) != normalise_completion(lo.completion):
                pairs.append((hi, lo))
    return pairs


def with_reward(samples: Sequence[Sample], rewards: Sequence[float]) -> list[Sample]:
    """The same samples re-scored (e.g. by a verifier or a judge)."""
    if len(rewards) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(rewards)} rewards")
    return [replace(s, reward=float(r)) for s, r in zip(samples, rewards)]


def correct_incorrect_pairs(samples: Sequence[Sample], max_pairs_per_prompt: int = 4) -> list[tuple[Sample, Sample]]:
    """V-STaR's verifier data (Hosseini et al. 2024): per prompt, (correct, incorrect) pairs from the
    cartesian product of its correct and incorrect samples, first `max_pairs_per_prompt` of them in
    a round-robin order (so one correct sample is not paired with every incorrect one first)."""
    pairs = []
    for group in group_by_prompt(samples).values():
        good = [s for s in group if s.correct]
        bad = [s for s in group if not s.correct]
        combos = [(good[(i + j) % len(good)], bad[j]) for i in range(len(good)) for j in range(len(bad))] if good and bad else []
        seen: set = set()
        for g, b in combos:
            key = (normalise_completion(g.completion), normalise_completion(b.completion))
            if key not in seen:
                seen.add(key)
                pairs.append((g, b))
            if len(seen) >= max_pairs_per_prompt:
                break
    return pairs
