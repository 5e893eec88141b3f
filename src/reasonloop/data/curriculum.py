"""Curriculum prompt sampling (CRRL): draw prompts whose difficulty matches the policy's capability.

The pool's prompts fall into *buckets*, one per (domain, level) of their metadata (`meta["domain"]`,
default one domain; `meta["level"]`, default one level). Within a domain the levels are ranked by their
sorted level value; rank i of n has the difficulty

    d_i = (i - 1/2) / n                           (i = 1..n: 0.1, 0.3, ..., 0.9 for five levels)

The capability estimate of a domain is its expected solve rate over its levels, each level's pass
rate read from a sliding window of training pass rates (the mean of the last `window` groups'
pass rates at that level; `prior` while the window is empty, 0 while the level is locked):

    c = (1/n) * sum_i p_i

so a policy that solves the first k levels and nothing above has c = k/n, which sits between the
difficulties of level k (solved) and level k+1 (not yet). A prompt of an unlocked level i is drawn
with probability

    P(i) = share(domain) * [ (1 - floor) * g_i / sum_j g_j + floor / u ],  g_i = exp(-(d_i - c)^2 / (2 sigma^2))

(the sums run over the domain's u unlocked levels; locked levels get 0): a Gaussian that peaks where
difficulty matches capability (the report's eq. 97), with a `floor` share spread uniformly so that no
unlocked level starves and its window stays current. `share(domain)` is the domain's fraction of the
pool, so a mixed task keeps its mix and the curriculum acts within each domain.

Milestones: with `milestones` set, a domain starts with its first level unlocked; level i+1 unlocks
(for good) once level i's window is full and its mean pass rate is >= the i-th threshold (one value
applies to every level).

Online filtering (`filter`): the trainer drops groups whose pass rate is 0 or 1 and refills the batch
(the dynamic-sampling loop, with pass rate instead of reward spread as its criterion), and this sampler
remembers such prompts and skips each one the next time its level's pass reaches it.

Inside a bucket prompts come in reshuffled passes (`ShuffledPasses`); bucket draws use
`random.Random(f"{seed}:curriculum:{call}")`, so the whole state is JSON (`state_dict`) and a resumed
run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reasonloop.config import ConfigError, require
from reasonloop.data.records import Example
from reasonloop.data.sampling import SeededShuffle, ShuffledPasses

PASS_COMPONENTS = ("accuracy", "task/accuracy", "correct", "task/correct")
"""Reward components read as a sample's verdict (1 correct, 0 wrong), first found wins."""


@dataclass
class CurriculumConfig:
    enabled: bool = False
    """Draw prompts by the curriculum (docs/curriculum.md) instead of uniform reshuffled passes over the pool."""
    window: int = 32
    """Groups per level in the sliding window of training pass rates (the capability estimate)."""
    sigma: float = 0.2
    """Width of the sampling Gaussian on the [0, 1] difficulty scale (levels are 1/n apart)."""
    floor: float = 0.05
    """Share of each domain's draws spread uniformly over its unlocked levels (0 = the pure Gaussian)."""
    prior: float = 0.5
    """Pass rate assumed for an unlocked level whose window is still empty."""
    milestones: list[float] = field(default_factory=list)
    """Pass rate (over a full window) level i must reach to unlock level i+1, one per level in order, or one
    value for every level; empty: every level is unlocked from the start."""
    filter: bool = True
    """Online filtering: drop groups whose pass rate is 0 or 1 and refill (dynamic sampling by pass rate,
    `max_refills` rounds), and skip such a prompt the next time its level's pass reaches it."""

    def __post_init__(self):
        require(self.window >= 1, f"curriculum.window={self.window}: must be >= 1")
        require(self.sigma > 0, f"curriculum.sigma={self.sigma}: must be > 0")
        require(0 <= self.floor <= 1, f"curriculum.floor={self.floor}: must be in [0, 1]")
        require(0 <= self.prior <= 1, f"curriculum.prior={self.prior}: must be in [0, 1]")
        require(all(0 <= m <= 1 for m in self.milestones), "curriculum.milestones: thresholds must be in [0, 1]")


# -- the formula, pure ----------------------------------------------------------------------------


def difficulties(n: int) -> list[float]:
    """d_i = (i - 1/2) / n for the n ranked levels of a domain."""
    return [(i + 0.5) / n for i in range(n)]


def capability(pass_rates: Sequence[float]) -> float:
    """c = mean of the per-level pass rates (locked levels passed in as 0): the expected solve rate."""
    return sum(pass_rates) / len(pass_rates)


def level_probabilities(pass_rates: Sequence[float], unlocked: Sequence[bool], sigma: float,
                        floor: float) -> list[float]:
    """P(level i | domain) for one domain's ranked levels (see the module docstring); sums to 1."""
    n = len(pass_rates)
    rates = [p if u else 0.0 for p, u in zip(pass_rates, unlocked)]
    c = capability(rates)
    g = [math.exp(-((d - c) ** 2) / (2 * sigma**2)) if u else 0.0 for d, u in zip(difficulties(n), unlocked)]
    total, live = sum(g), sum(unlocked)
    if live == 0:
        raise ValueError("no unlocked level")
    return [((1 - floor) * gi / total + floor / live) if u else 0.0 for gi, u in zip(g, unlocked)]


def milestone_threshold(milestones: Sequence[float], rank: int) -> float | None:
    """The pass rate level `rank` (0-based) must reach to unlock the next one; None when milestones are off."""
    if not milestones:
        return None
    return milestones[0] if len(milestones) == 1 else milestones[rank]


def group_pass_rate(components: Mapping[str, Any]) -> float | None:
    """A group's pass rate: the mean of its first verdict component (`PASS_COMPONENTS`), or None."""
    for name in PASS_COMPONENTS:
        if name in components:
            return float(components[name].float().mean())
    return None


# -- the sampler ----------------------------------------------------------------------------------


@dataclass
class _Level:
    key: str  # "domain/level"
    domain: str
    indices: list[int]  # pool indices of this bucket
    passes: ShuffledPasses
    window: deque = field(default_factory=deque)
    unlocked: bool = True


class CurriculumSampler:
    """Indices into a pool, drawn by the curriculum; the same next/state_dict/load_state_dict surface as
    `ShuffledPasses`, plus `observe` (the training pass rates) and `metrics`."""

    def __init__(self, pool: Sequence[Example], cfg: CurriculumConfig, seed: int):
        if not pool:
            raise ValueError("cannot draw from an empty pool")
        self.pool, self.cfg, self.seed = pool, cfg, seed
        self.calls = 0  # next() calls so far: the seed of the next bucket draw
        self.retired: set[int] = set()  # pool indices to skip once (their last group passed 0 or 1)
        self.skipped = 0  # retired prompts skipped so far
        self.drawn = 0  # prompts handed out so far (x group size = samples generated)
        buckets: dict[tuple[str, Any], list[int]] = {}
        for i, ex in enumerate(pool):
            buckets.setdefault((str(ex.meta.get("domain", "")), ex.meta.get("level", "all")), []).append(i)
        self.domains: dict[str, list[_Level]] = {}
        for domain, level in sorted(buckets, key=lambda b: (b[0], _sort_key(b[1]))):
            key = f"{domain}/{level}" if domain else str(level)
            idx = buckets[(domain, level)]
            passes = ShuffledPasses(len(idx), SeededShuffle(lambda e, k=key: f"{seed}:{k}:{e}"))
            self.domains.setdefault(domain, []).append(
                _Level(key, domain, idx, passes, deque(maxlen=cfg.window)))
        for levels in self.domains.values():
            if cfg.milestones:
                require(len(cfg.milestones) in (1, len(levels) - 1),
                        f"curriculum.milestones has {len(cfg.milestones)} thresholds; give one, or one per level "
                        f"but the last ({len(levels) - 1} for levels {[lv.key for lv in levels]})")
                for rank, lv in enumerate(levels):
                    lv.unlocked = rank == 0
        self.share = {d: sum(len(lv.indices) for lv in levels) / len(pool) for d, levels in self.domains.items()}
        self._level_of = {i: lv for levels in self.domains.values() for lv in levels for i in lv.indices}
        self._position = {id(ex): i for i, ex in enumerate(pool)}  # the trainer hands back the pool's own objects
        self._by_prompt = {ex.prompt: i for i, ex in enumerate(pool)}  # else (a copy): found by its prompt

    # -- the estimate and the distribution --------------------------------------------------------
    def pass_rate(self, level: _Level) -> float:
        if not level.unlocked:
            return 0.0
        return sum(level.window) / len(level.window) if level.window else self.cfg.prior

    def capability(self, domain: str) -> float:
        return capability([self.pass_rate(lv) for lv in self.domains[domain]])

    def probabilities(self) -> dict[str, float]:
        """P(level) over every bucket, keyed "domain/level" (or "level" for a single unnamed domain)."""
        out = {}
        for domain, levels in self.domains.items():
            probs = level_probabilities([self.pass_rate(lv) for lv in levels], [lv.unlocked for lv in levels],
                                        self.cfg.sigma, self.cfg.floor)
            out.update({lv.key: self.share[domain] * p for lv, p in zip(levels, probs)})
        return out

    def level_of(self, index: int) -> str:
        """The bucket key ("domain/level", or "level") of pool item `index`."""
        return self._level_of[index].key

    # -- drawing ------------------------------------------------------------------------------------
    def next(self, n: int) -> list[int]:
        """`n` pool indices: levels drawn from `probabilities()`, prompts from each level's reshuffled passes."""
        rng = random.Random(f"{self.seed}:curriculum:{self.calls}")
        self.calls += 1
        probs = self.probabilities()
        levels = {lv.key: lv for lvs in self.domains.values() for lv in lvs}
        keys = list(probs)
        self.drawn += n
        return [self._next_in(levels[k]) for k in rng.choices(keys, weights=[probs[k] for k in keys], k=n)]

    def _next_in(self, level: _Level) -> int:
        """The level's next prompt, skipping (once each) prompts retired by online filtering."""
        while True:
            i = level.indices[level.passes.next(1)[0]]
            if i not in self.retired:
                return i
            self.retired.discard(i)  # skipped once; the next pass offers it again
            self.skipped += 1

    # -- learning the estimate -----------------------------------------------------------------------
    def observe(self, examples: Sequence[Example], pass_rates: Sequence[float]) -> None:
        """Record the training pass rate of each example's group (examples from this sampler's pool);
        then unlock every level whose milestone is reached."""
        for ex, rate in zip(examples, pass_rates):
            i = self._position.get(id(ex), self._by_prompt.get(ex.prompt))
            if i is None:
                raise ValueError(f"observe: {ex.prompt[:60]!r} is not in this sampler's pool")
            self._level_of[i].window.append(float(rate))
            if self.cfg.filter and rate in (0.0, 1.0):
                self.retired.add(i)
        self._unlock()

    def _unlock(self) -> None:
        for levels in self.domains.values():
            for rank, (lv, above) in enumerate(zip(levels, levels[1:])):
                threshold = milestone_threshold(self.cfg.milestones, rank)
                if above.unlocked or threshold is None or not lv.unlocked:
                    continue
                if len(lv.window) == self.cfg.window and sum(lv.window) / len(lv.window) >= threshold:
                    above.unlocked = True

    def metrics(self) -> dict[str, float]:
        out = {f"curriculum/p/{k}": p for k, p in self.probabilities().items()}
        for domain in self.domains:
            out[f"curriculum/capability{'/' + domain if domain else ''}"] = self.capability(domain)
        out["curriculum/unlocked"] = float(sum(lv.unlocked for lvs in self.domains.values() for lv in lvs))
        out["curriculum/skipped"] = float(self.skipped)
        out["curriculum/prompts"] = float(self.drawn)
        return out

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        levels = {lv.key: {"passes": lv.passes.state_dict(), "window": list(lv.window), "unlocked": lv.unlocked}
                  for lvs in self.domains.values() for lv in lvs}
        return {"curriculum": True, "calls": self.calls, "retired": sorted(self.retired), "skipped": self.skipped,
                "drawn": self.drawn, "levels": levels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("curriculum"):
            raise ConfigError("this checkpoint's prompt sampler is not a curriculum (was curriculum.enabled changed?)")
        self.calls, self.skipped, self.drawn = int(state["calls"]), int(state["skipped"]), int(state["drawn"])
        self.retired = {int(i) for i in state["retired"]}
        for lvs in self.domains.values():
            for lv in lvs:
                saved = state["levels"][lv.key]
                lv.passes.load_state_dict(saved["passes"])
                lv.window = deque((float(x) for x in saved["window"]), maxlen=self.cfg.window)
                lv.unlocked = bool(saved["unlocked"])


def _sort_key(level: Any) -> tuple[int, Any]:
    """Numbers in numeric order, then anything else by its text."""
    try:
        return (0, float(level))
    except (TypeError, ValueError):
        return (1, str(level))


def make_prompt_sampler(pool: Sequence[Example], cfg: CurriculumConfig, seed: int) -> ShuffledPasses | CurriculumSampler:
    """The RL trainer's prompt sampler: the curriculum when enabled, else the uniform reshuffled passes
    (the order the figures of record were measured with)."""
    if cfg.enabled:
        return CurriculumSampler(pool, cfg, seed)
    return ShuffledPasses(len(pool), SeededShuffle(lambda epoch: f"{seed}:{epoch}"))
