"""MGRCR: GRPO with consistency rewards at several granularities (docs/frameworks.md#mgrcr).

`reasonloop mgrcr` is `reasonloop train` whose reward adds, to the task's own (outcome) reward,

    step_weight      * step validity     every written equation is exactly true (rewards/consistency.py)
  + answer_weight    * answer agreement  the last equation's result is the final answer
  + group_weight     * group agreement   share of the prompt's other samples with the same answer
  + diversity_weight * group diversity   1 / copies of this exact text in the group (against collapse)

A component that does not apply (no equation, no answer) counts 0. Everything else is GRPO: group-normalised
advantages over this total, so a constant term (all samples equally valid) moves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.recipes import rl
from reasonloop.rewards.core import RewardResult
from reasonloop.rewards.consistency import answer_agreement, group_agreement, group_diversity, step_validity
from reasonloop.train.evaluation import answer_key


@dataclass
class MGRCRConfig:
    step_weight: float = 0.2
    """Weight of step validity (fraction of exactly true equations)."""
    answer_weight: float = 0.2
    """Weight of answer agreement (the last equation's result is the answer)."""
    group_weight: float = 0.2
    """Weight of group agreement (share of the prompt's other samples giving the same answer)."""
    diversity_weight: float = 0.1
    """Weight of the diversity regulariser (1 / copies of the exact text in the group)."""

    def __post_init__(self):
        for k in ("step_weight", "answer_weight", "group_weight", "diversity_weight"):
            require(getattr(self, k) >= 0, f"mgrcr.{k} must be >= 0")


@dataclass
class Config(rl.Config):
    mgrcr: MGRCRConfig = field(default_factory=MGRCRConfig)
    """The consistency rewards' weights."""


def consistency_components(completions: list[str], keys: list, group_size: int) -> dict[str, torch.Tensor]:
    """The four components ([N] each, rows prompt-major in groups of `group_size`); None counts 0."""
    n = len(completions)
    step = torch.tensor([step_validity(c) or 0.0 for c in completions])
    agree = torch.tensor([answer_agreement(c) or 0.0 for c in completions])
    group, div = torch.zeros(n), torch.zeros(n)
    for s in range(0, n, group_size):
        group[s : s + group_size] = torch.tensor(group_agreement(keys[s : s + group_size]))
        div[s : s + group_size] = torch.tensor(group_diversity(completions[s : s + group_size]))
    return {"step_validity": step, "answer_agreement": agree, "group_agreement": group, "diversity": div}


class MGRCRTrainer(rl.Trainer):
    """The GRPO trainer whose reward adds the consistency components."""

    def total_reward(self, scored: RewardResult, completions: list[str], examples: list[Example],
                     group_size: int) -> torch.Tensor:
        w = self.cfg.mgrcr
        keys = [answer_key(self.task, c) for c in completions]
        parts = consistency_components(completions, keys, group_size)
        scored.components.update(parts)
        return (scored.total + w.step_weight * parts["step_validity"] + w.answer_weight * parts["answer_agreement"]
                + w.group_weight * parts["group_agreement"] + w.diversity_weight * parts["diversity"])


def run(cfg: Config) -> dict:
    return MGRCRTrainer(cfg).train()
