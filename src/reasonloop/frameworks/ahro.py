"""AHRO: layered rewards whose per-prompt weights a small network learns jointly with the policy
(docs/frameworks.md#ahro).

`reasonloop ahro` is `reasonloop train` whose reward is

    outcome + w_format(x) * format + w_step(x) * step_validity + w_efficiency(x) * efficiency

- outcome: the task's verdict (its `accuracy` component), weight 1: the anchor the others shape;
- format: the strict `<think>..</think><answer>..</answer>` shape; step validity: the fraction of written
  equations that are exactly true (rewards/consistency.py); efficiency: 1 - min(1, characters / length_scale);
- w(x) = max_weight * sigmoid(net(features(x))), net a 5 -> 8 -> 3 tanh MLP on prompt features (numbers,
  operations, digits, length; frameworks/_common.py), its last layer zero at the start (every weight
  max_weight / 2).

The network takes one Adam step per RL step, after the batch's rewards were computed with the weights it had
before (so it always learns from verdicts its weights did not see), maximising the within-group correlation
of the weighted shaping reward with correctness (algos/reward_weights.py) plus a pull of the mean weight
towards its initial value (the correlation does not fix the scale). `ahro.learn=false` keeps the initial
weights: the fixed-weight ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from reasonloop.algos.reward_weights import grouped_correlation, weighted_shaping
from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.frameworks._common import FEATURES, prompt_features, with_extra
from reasonloop.recipes import rl
from reasonloop.rewards.answer_format import strict_format_reward
from reasonloop.rewards.consistency import step_validity
from reasonloop.rewards.core import RewardResult

SHAPING = ("format", "step_validity", "efficiency")


@dataclass
class AHROConfig:
    learn: bool = True
    """Train the weight network (false: the fixed initial weights, the ablation)."""
    max_weight: float = 0.5
    """Upper bound of each shaping weight (they start at half of it)."""
    lr: float = 0.05
    """Adam learning rate of the weight network."""
    scale_coef: float = 1.0
    """Coefficient of the pull of the mean weight towards its initial value."""
    length_scale: int = 64
    """Characters at which efficiency reaches 0."""

    def __post_init__(self):
        require(self.max_weight > 0 and self.lr > 0 and self.length_scale > 0 and self.scale_coef >= 0,
                "ahro.max_weight, ahro.lr and ahro.length_scale must be > 0, ahro.scale_coef >= 0")


@dataclass
class Config(rl.Config):
    ahro: AHROConfig = field(default_factory=AHROConfig)
    """The layered reward and its weight network."""


class WeightNet(nn.Module):
    """Prompt features -> one weight per shaping component, in (0, max_weight)."""

    def __init__(self, max_weight: float, hidden: int = 8):
        super().__init__()
        self.max_weight = max_weight
        self.net = nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.Tanh(), nn.Linear(hidden, len(SHAPING)))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [N, F] -> [N, K]
        return self.max_weight * torch.sigmoid(self.net(features))


def shaping_components(completions: list[str], length_scale: int) -> torch.Tensor:
    """[N, 3]: format, step validity (0 without equations), efficiency."""
    fmt = strict_format_reward([], completions)
    valid = [step_validity(c) or 0.0 for c in completions]
    eff = [1.0 - min(1.0, len(c) / length_scale) for c in completions]
    return torch.tensor([fmt, valid, eff], dtype=torch.float32).T


class AHROTrainer(rl.Trainer):
    """The GRPO trainer with the layered, per-prompt weighted reward."""

    def __init__(self, cfg: Config, **kw):
        torch.manual_seed(cfg.seed)
        self.weight_net = WeightNet(cfg.ahro.max_weight)
        self.weight_optimizer = torch.optim.Adam(self.weight_net.parameters(), lr=cfg.ahro.lr)
        super().__init__(cfg, **kw)

    def total_reward(self, scored: RewardResult, completions: list[str], examples: list[Example],
                     group_size: int) -> torch.Tensor:
        cfg = self.cfg.ahro
        if "accuracy" not in scored.components:
            raise ValueError(f"AHRO's outcome layer is the task's 'accuracy' component; task {self.cfg.task!r} has none")
        outcome = scored.components["accuracy"]
        comps = shaping_components(completions, cfg.length_scale)
        feats = torch.tensor([prompt_features(ex.prompt) for ex in examples])
        with torch.no_grad():
            weights = self.weight_net(feats)
        total = outcome + weighted_shaping(comps, weights)
        for k, name in enumerate(SHAPING):
            scored.components[name if name != "format" else "format_layer"] = comps[:, k]
            scored.components[f"w_{name}"] = weights[:, k]
        if cfg.learn:
            self._train_weights(feats, comps, outcome, [group_size] * (len(completions) // group_size))
        return total

    def _train_weights(self, feats, comps, outcome, group_sizes) -> None:
        weights = self.weight_net(feats)
        corr = grouped_correlation(weighted_shaping(comps, weights), outcome, group_sizes)
        scale = (weights.mean() - self.cfg.ahro.max_weight / 2) ** 2
        loss = -corr + self.cfg.ahro.scale_coef * scale
        self.weight_optimizer.zero_grad()
        loss.backward()
        self.weight_optimizer.step()
        self.last_correlation = float(corr.detach())

    def _extra_modules(self):
        return {**super()._extra_modules(), "ahro_weight_net": self.weight_net,
                "ahro_weight_optimizer": self.weight_optimizer}

    def weights_by_level(self) -> dict[str, dict[str, float]]:
        """The learned weights averaged over the held-out prompts of each level."""
        out: dict[str, list] = {}
        with torch.no_grad():
            for ex in self.held_out:
                w = self.weight_net(torch.tensor([prompt_features(ex.prompt)]))[0].tolist()
                out.setdefault(f"level/{ex.meta.get('level', 'all')}", []).append(w)
        return {lv: {name: round(sum(r[k] for r in rows) / len(rows), 4) for k, name in enumerate(SHAPING)}
                for lv, rows in sorted(out.items())}


def run(cfg: Config) -> dict:
    trainer = AHROTrainer(cfg)
    result = trainer.train()
    weights = trainer.weights_by_level()
    print("AHRO weights by level (format, step validity, efficiency):")
    for level, w in weights.items():
        print(f"  {level:<9} " + "  ".join(f"{k}={v:.3f}" for k, v in w.items()))
    return with_extra(trainer, result, {"weights_by_level": weights, "learn": cfg.ahro.learn})
