"""Paired prompts for online RL: each original train prompt travels with a variant of itself, and a reward
compares the two groups' answers. ARRE (a semantics-preserving perturbation; the answers should agree) and
CREL (a counterfactual; the answers should move by exactly the change in the true answer) are this one
mechanism with a different variant maker and pair reward.

`PairedTrainer` is the GRPO `Trainer` with one change to the prompt draw: of the B prompts of a step,
`round(B * variant_frac)` are variants of other prompts drawn in the same step, so a step still samples
B x G completions (equal samples with plain GRPO). The pair reward is one more reward component; it sees
every row of the step at once (the trainer scores a step's prompts in one call) and matches rows by the
`pair` and `role` metadata the trainer stamps on each example.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Sequence

from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.recipes import rl
from reasonloop.rewards.core import RewardSpec
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.train.evaluation import answer_key, evaluate

VariantMaker = Callable[[Example, random.Random], "Example | None"]
Key = Hashable | None


def pair_agreement(keys_a: Sequence[Key], keys_b: Sequence[Key]) -> tuple[list[float], list[float]]:
    """ARRE's consistency term. For every sample of group a, the fraction of group b's samples that gave
    the same answer, and the same for b against a. A missing answer (None) agrees with nothing.

    a = [3, 3, None], b = [3, 5] -> a: [1/2, 1/2, 0], b: [2/3, 0]."""
    same = lambda x, y: x is not None and x == y  # noqa: E731
    ra = [sum(same(x, y) for y in keys_b) / len(keys_b) if keys_b else 0.0 for x in keys_a]
    rb = [sum(same(y, x) for x in keys_a) / len(keys_a) if keys_a else 0.0 for y in keys_b]
    return ra, rb


def intervention_agreement(keys_a: Sequence[Key], keys_b: Sequence[Key], delta: float) -> tuple[list[float], list[float]]:
    """CREL's intervention-consistency term: the intervention changed the true answer by `delta` (b's
    answer minus a's); each sample of a scores the fraction of b's samples y with y - x == delta, each
    sample of b the fraction of a's samples x with the same. Non-numeric answers match nothing.

    a = [12, 12, 9], b = [15, 10], delta = 3 -> a: [1/2, 1/2, 0], b: [2/3, 0]."""
    def moved(x: Key, y: Key) -> bool:
        return isinstance(x, (int, float)) and isinstance(y, (int, float)) and y - x == delta

    ra = [sum(moved(x, y) for y in keys_b) / len(keys_b) if keys_b else 0.0 for x in keys_a]
    rb = [sum(moved(x, y) for x in keys_a) / len(keys_a) if keys_a else 0.0 for y in keys_b]
    return ra, rb


@dataclass(frozen=True)
class PairReward:
    """A reward component over a whole step: rows are grouped by their example's `pair` id and `role`
    ('original' or 'variant'); `agree(keys_original, keys_variant, original_answer, variant_answer)` gives
    both groups' per-sample scores. Rows outside a complete pair score None (not applicable)."""

    key_of: Callable[[str], Key]
    agree: Callable[[Sequence[Key], Sequence[Key], str, str], tuple[list[float], list[float]]]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str],
                 pair: Sequence[Any] | None = None, role: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
        out: list[float | None] = [None] * len(completions)
        if pair is None or role is None:
            return out
        rows: dict[Any, dict[str, list[int]]] = defaultdict(lambda: {"original": [], "variant": []})
        for i, (p, r) in enumerate(zip(pair, role)):
            if p is not None and r in ("original", "variant"):
                rows[p][r].append(i)
        for sides in rows.values():
            a, b = sides["original"], sides["variant"]
            if not a or not b:
                continue
            ra, rb = self.agree([self.key_of(completions[i]) for i in a], [self.key_of(completions[i]) for i in b],
                                answer[a[0]], answer[b[0]])
            for i, v in zip(a + b, ra + rb):
                out[i] = v
        return out


def stamp_pairs(originals: Sequence[Example], variants: Sequence[Example | None], tag: str) -> list[Example]:
    """[o1, v1, o2, v2, ..., the unpaired originals] with `pair`/`role` metadata; a None variant leaves its
    original unpaired (it still trains, with no pair reward)."""
    out: list[Example] = []
    for i, (o, v) in enumerate(zip(originals, variants)):
        if v is None:
            out.append(o)
            continue
        pid = f"{tag}:{i}:{o.id}"
        out.append(replace(o, meta={**o.meta, "pair": pid, "role": "original"}))
        out.append(replace(v, meta={**v.meta, "pair": pid, "role": "variant"}))
    return out + list(originals[len(variants):])


@dataclass
class PairedConfig(rl.Config):
    """rl.Config plus the pairing keys (ARRE and CREL extend it)."""

    variant_frac: float = 0.5
    """Share of each step's prompts that are variants of the step's other prompts (0: plain GRPO)."""
    pair_coef: float = 0.5
    """Weight of the pair reward component (0: variants are plain augmentation)."""

    def __post_init__(self):
        super().__post_init__()
        require(0 <= self.variant_frac <= 0.5, "variant_frac must be in [0, 0.5] (each variant needs its original)")
        require(self.pair_coef >= 0, "pair_coef must be >= 0")


class PairedTrainer(rl.Trainer):
    """GRPO where `variant_frac` of each step's B prompts are variants of the others; see the module docstring."""

    pair_name = "pair"

    def __init__(self, cfg: PairedConfig, make_variant: VariantMaker, pair_reward: PairReward, **kwargs: Any):
        self.make_variant = make_variant
        self.pair_reward = pair_reward
        super().__init__(cfg, **kwargs)

    def _reward_specs(self) -> list[RewardSpec]:
        specs = super()._reward_specs()
        if self.cfg.pair_coef > 0 and self.cfg.variant_frac > 0:
            specs.append(RewardSpec(self.pair_name, self.pair_reward, self.cfg.pair_coef))
        return specs

    def next_prompts(self, n: int) -> list[Example]:
        n_variants = round(n * self.cfg.variant_frac)
        originals = super().next_prompts(n - n_variants)
        if not n_variants:
            return originals
        rng = random.Random(f"{self.cfg.seed}:variants:{self.state.step}:{n}")
        variants = [self.make_variant(ex, rng) for ex in originals[:n_variants]]
        return stamp_pairs(originals, variants, f"s{self.state.step}")


def evaluate_sets(trainer: rl.Trainer, sets: dict[str, list[Example]]) -> dict[str, dict]:
    """Greedy held-out accuracy of the trainer's current policy on each named example set (eval_k=0)."""
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=trainer.cfg.sampling.max_new_tokens)
    out = {}
    for name, examples in sets.items():
        summary, rows = evaluate(trainer.engine, trainer.task, examples, trainer.render, sampling, k=0,
                                 seed=trainer.cfg.seed)
        out[name] = {"summary": summary, "rows": rows}
    return out


def greedy_keys(task: Any, rows: list[dict]) -> dict[str, Key]:
    """{example id: the greedy completion's answer key} from `evaluate`'s sample rows."""
    return {r["id"]: answer_key(task, r["completion"]) for r in rows if r["mode"] == "greedy"}
