"""CAPL: answer directly (System 1) or think step by step (System 2), chosen per prompt by a learned switch
(docs/frameworks.md#capl).

The two modes are forced openings of the trace (frameworks/_common.py `opening`), the only "instruction" the
embedded character-level model can follow: System 2 starts `<think>17+4=` (the first step covers one
operation, so the model goes on step by step), System 1 starts `<think>17+4-9=` (the whole chain at once:
the model writes the result straight away). On one-operation problems the two are the same text.

Training (`reasonloop capl`): every prompt's G samples are split, G/2 under each mode, and each half is its
own GRPO group (equal samples to GRPO's G per prompt); the policy learns both modes. The switch, a logistic
regression on prompt features, is trained jointly: after each step, for every prompt, the utility of a mode
is its accuracy minus `token_cost` times its mean output tokens / max_new_tokens, and the switch takes a
weighted logistic step towards the better mode (weight |utility difference|): a full-information contextual
bandit.

Held-out evaluation decodes both modes greedily for every problem and reports, per level, the accuracy and
mean tokens of the switched policy (think when p(think) > threshold), and `extra.curve`: accuracy and
tokens at thresholds 0 (always think) ... 1 and above (never think), with the unforced policy beside them.
`extra.cost_curve` refits the switch after training, on every training prompt's statistics, at several token
costs: the accuracy/tokens trade-off the switch reaches when tokens are dearer.
Tokens count the forced opening too (a real System 2 trace would have written it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from reasonloop.config import require
from reasonloop.data.records import Example
from reasonloop.frameworks._common import FEATURES, opening, prompt_features, with_extra
from reasonloop.recipes import rl
from reasonloop.rewards.core import compute_rewards
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.train.evaluation import evaluate as plain_evaluate, flat_metrics

THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.01)


@dataclass
class CAPLConfig:
    token_cost: float = 0.5
    """Utility = accuracy - token_cost * tokens / max_new_tokens (per mode and prompt)."""
    think_chunk: int = 1
    """Operations the first step of a System 2 trace covers."""
    direct_chunk: int = 99
    """Operations the first step of a System 1 trace covers (>= the operations: the whole chain)."""
    lr: float = 0.1
    """Adam learning rate of the switch."""
    threshold: float = 0.5
    """Think when p(think) > threshold (the held-out table's operating point)."""

    def __post_init__(self):
        require(self.token_cost >= 0 and self.lr > 0, "capl.token_cost must be >= 0 and capl.lr > 0")
        require(self.think_chunk >= 1 and self.direct_chunk >= 1, "capl.think_chunk and capl.direct_chunk must be >= 1")


@dataclass
class Config(rl.Config):
    capl: CAPLConfig = field(default_factory=CAPLConfig)
    """The two modes and the switch."""

    def __post_init__(self):
        super().__post_init__()
        require(self.group_size >= 4 and self.group_size % 2 == 0,
                f"capl splits each group between the two modes: group_size must be even and >= 4, got {self.group_size}")


def switch_targets(acc: torch.Tensor, tokens: torch.Tensor, token_cost: float, max_tokens: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt, from [P, 2] mean accuracy and mean tokens of (think, direct): the target (1: think is the
    better mode) and the weight |utility(think) - utility(direct)|."""
    utility = acc - token_cost * tokens / max_tokens
    diff = utility[:, 0] - utility[:, 1]
    return (diff > 0).float(), diff.abs()


def curve(p_think: list[float], think: list[tuple[bool, int]], direct: list[tuple[bool, int]],
          thresholds=THRESHOLDS) -> list[dict[str, float]]:
    """Accuracy and mean tokens of 'think when p > threshold', from each problem's outcome in both modes."""
    out = []
    for t in thresholds:
        picks = [th if p > t else di for p, th, di in zip(p_think, think, direct)]
        out.append({"threshold": t, "think_rate": sum(p > t for p in p_think) / len(p_think),
                    "accuracy": sum(ok for ok, _ in picks) / len(picks), "tokens": sum(n for _, n in picks) / len(picks)})
    return out


class CAPLTrainer(rl.Trainer):
    """GRPO over both modes, with the switch trained on their utilities."""

    def __init__(self, cfg: Config, **kw):
        torch.manual_seed(cfg.seed)
        self.switch = nn.Linear(len(FEATURES), 1)
        nn.init.zeros_(self.switch.weight)
        nn.init.zeros_(self.switch.bias)
        self.switch_optimizer = torch.optim.Adam(self.switch.parameters(), lr=cfg.capl.lr)
        self.last_eval: dict = {}
        self.seen: list[tuple[list[float], list[list[float]]]] = []  # every training prompt: features, stats
        self.outcomes: tuple = ()  # the last held-out evaluation: (think, direct) per problem
        super().__init__(cfg, **kw)

    def p_think(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.switch(torch.tensor([prompt_features(p) for p in prompts]))[:, 0])

    def _opening_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    def rollout(self, prompts: list[Example], timing: dict[str, float]) -> list[rl.ScoredGroup]:
        cfg, half = self.cfg, self.cfg.group_size // 2
        groups: list[rl.ScoredGroup] = []
        stats = torch.zeros(len(prompts), 2, 2)  # prompt, mode (think, direct), (accuracy, tokens)
        for m, chunk in enumerate((cfg.capl.think_chunk, cfg.capl.direct_chunk)):
            heads = [opening(e.prompt, chunk) for e in prompts]
            t0 = time.time()
            batch = self.engine.generate([self.render(e.prompt) + h for e, h in zip(prompts, heads)], half,
                                         cfg.sampling, self.generator)
            t1 = time.time()
            rows_exs = [e for e in prompts for _ in range(half)]
            full = [heads[r // half] + c for r, c in enumerate(batch.completions)]
            scored = compute_rewards(self.reward_specs, full, rows_exs)
            timing["time/generation"] = timing.get("time/generation", 0.0) + t1 - t0
            timing["time/reward"] = timing.get("time/reward", 0.0) + time.time() - t1
            for name, count in scored.errors.items():
                self.state.count(f"reward_error/{name}", count)
            total = scored.total + self._overlong(batch)
            tokens = batch.completion_mask.sum(-1).float()
            for i, ex in enumerate(prompts):
                rows = slice(i * half, (i + 1) * half)
                comps = {k: v[rows] for k, v in scored.components.items()}
                comps["think_mode"] = torch.full((half,), float(m == 0))
                groups.append(rl.ScoredGroup(ex, batch.rows(rows), total[rows], comps))
                stats[i, m, 0] = float(scored.components["accuracy"][rows].mean())
                stats[i, m, 1] = float(tokens[rows].mean()) + self._opening_tokens(heads[i])
        self._train_switch([e.prompt for e in prompts], stats)
        self.seen += [(prompt_features(e.prompt), stats[i].tolist()) for i, e in enumerate(prompts)]
        return groups

    def _train_switch(self, prompts: list[str], stats: torch.Tensor) -> None:
        target, weight = switch_targets(stats[..., 0], stats[..., 1], self.cfg.capl.token_cost,
                                        self.cfg.sampling.max_new_tokens)
        if float(weight.sum()) == 0:
            return
        logits = self.switch(torch.tensor([prompt_features(p) for p in prompts]))[:, 0]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum()
        loss = loss / weight.sum()
        self.switch_optimizer.zero_grad()
        loss.backward()
        self.switch_optimizer.step()

    def _extra_modules(self):
        return {**super()._extra_modules(), "capl_switch": self.switch, "capl_switch_optimizer": self.switch_optimizer}

    def _greedy(self, examples: list[Example], chunk: int) -> list[tuple[bool, int]]:
        """(correct, tokens incl. the forced opening) of each example decoded greedily under one mode."""
        out = []
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=self.cfg.sampling.max_new_tokens)
        for s in range(0, len(examples), 64):
            chunk_exs = examples[s : s + 64]
            heads = [opening(e.prompt, chunk) for e in chunk_exs]
            batch = self.engine.generate([self.render(e.prompt) + h for e, h in zip(chunk_exs, heads)], 1, sampling)
            lengths = batch.completion_mask.sum(-1).tolist()
            for e, h, c, n in zip(chunk_exs, heads, batch.completions, lengths):
                out.append((self.task.is_correct(h + c, e), int(n) + self._opening_tokens(h)))
        return out

    def evaluate(self) -> dict:
        """Per level: accuracy (pass@1_greedy) and tokens of the switched policy; the curve goes to last_eval."""
        exs, cfg = self.held_out, self.cfg.capl
        think, direct = self._greedy(exs, cfg.think_chunk), self._greedy(exs, cfg.direct_chunk)
        p = self.p_think([e.prompt for e in exs]).tolist()
        self.outcomes = (think, direct)
        by_level: dict[str, list[int]] = {}
        for i, e in enumerate(exs):
            by_level.setdefault(f"level/{e.meta.get('level', 'all')}", []).append(i)
        summary = {}
        for group, idx in [*sorted(by_level.items()), ("overall", list(range(len(exs))))]:
            pick = [think[i] if p[i] > cfg.threshold else direct[i] for i in idx]
            summary[group] = {"n": len(idx), "pass@1_greedy": sum(ok for ok, _ in pick) / len(idx),
                              "tokens": sum(n for _, n in pick) / len(idx),
                              "think_rate": sum(p[i] > cfg.threshold for i in idx) / len(idx)}
        self.last_eval = {"curve": curve(p, think, direct),
                          "p_think_by_level": {g: round(sum(p[i] for i in idx) / len(idx), 4)
                                               for g, idx in sorted(by_level.items())}}
        self.run.log(self.state.step, flat_metrics(summary))
        return summary

    def unforced(self) -> dict:
        """The policy's own held-out table, no opening forced (what GRPO's table measures)."""
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=self.cfg.sampling.max_new_tokens)
        summary, rows = plain_evaluate(self.engine, self.task, self.held_out, self.render, sampling, k=0,
                                       seed=self.cfg.seed)
        tokens = [len(self.tokenizer.encode(r["completion"], add_special_tokens=False)) for r in rows]
        summary["overall"]["tokens"] = sum(tokens) / max(len(tokens), 1)
        return summary


COSTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def fit_switch(features: torch.Tensor, stats: torch.Tensor, token_cost: float, max_tokens: int,
               steps: int = 300, lr: float = 0.1) -> nn.Linear:
    """A fresh logistic switch fitted to the training prompts' (features [P, F], stats [P, 2, 2]) at one token cost:
    the weighted logistic loss of `_train_switch`, full batch."""
    gen = torch.Generator().manual_seed(0)
    switch = nn.Linear(features.shape[1], 1)
    with torch.no_grad():
        switch.weight.copy_(torch.randn(switch.weight.shape, generator=gen) * 0.01)
        switch.bias.zero_()
    target, weight = switch_targets(stats[..., 0], stats[..., 1], token_cost, max_tokens)
    optimizer = torch.optim.Adam(switch.parameters(), lr=lr)
    for _ in range(steps):
        loss = (nn.functional.binary_cross_entropy_with_logits(switch(features)[:, 0], target, reduction="none")
                * weight).sum() / weight.sum().clamp(min=1e-8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return switch


def cost_curve(trainer: CAPLTrainer, costs=COSTS) -> list[dict[str, float]]:
    """Held-out accuracy and tokens of switches fitted after training on every training prompt's statistics,
    one per token cost (the policy is the same; only the switch's objective changes)."""
    feats = torch.tensor([f for f, _ in trainer.seen])
    stats = torch.tensor([s for _, s in trainer.seen])
    held = torch.tensor([prompt_features(e.prompt) for e in trainer.held_out])
    think, direct = trainer.outcomes
    out = []
    for cost in costs:
        switch = fit_switch(feats, stats, cost, trainer.cfg.sampling.max_new_tokens)
        with torch.no_grad():
            p = torch.sigmoid(switch(held)[:, 0]).tolist()
        point = curve(p, think, direct, thresholds=(0.5,))[0]
        out.append({"token_cost": cost, "think_rate": point["think_rate"], "accuracy": point["accuracy"],
                    "tokens": point["tokens"]})
    return out


def run(cfg: Config) -> dict:
    trainer = CAPLTrainer(cfg)
    result = trainer.train()
    free = trainer.unforced()
    print("CAPL accuracy/tokens curve (think when p(think) > threshold; 0 = always think, 1.01 = never think):")
    for pt in trainer.last_eval["curve"]:
        print(f"  threshold {pt['threshold']:<5} think {pt['think_rate']:.2f}  accuracy {pt['accuracy']:.3f}  "
              f"tokens {pt['tokens']:.1f}")
    print(f"  unforced policy: accuracy {free['overall']['pass@1_greedy']:.3f}  tokens {free['overall']['tokens']:.1f}")
    costs = cost_curve(trainer)
    print("CAPL switches refitted per token cost on the training prompts' statistics:")
    for pt in costs:
        print(f"  token_cost {pt['token_cost']:<5} think {pt['think_rate']:.2f}  accuracy {pt['accuracy']:.3f}  "
              f"tokens {pt['tokens']:.1f}")
    return with_extra(trainer, result, {**trainer.last_eval, "unforced": free, "cost_curve": costs})
