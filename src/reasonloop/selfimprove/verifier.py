"""A DPO-trained verifier (V-STaR, Hosseini et al. 2024): a copy of the base model trained with DPO
on (correct, incorrect) completions of the same prompt; its score for a completion is DPO's implicit
reward beta * (log pi_v(y|x) - log pi_ref(y|x)), with pi_ref the frozen base model.

It ranks samples (filtering during self-training) and picks among N candidates at test time
(verifier best-of-N). It is a sequence scorer only: it never generates.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence

import torch

from reasonloop.data.records import Example
from reasonloop.models.forward import ForwardConfig
from reasonloop.selfimprove.preference import (
    PreferenceData,
    implicit_reward,
    preference_step,
    sequence_logps,
)
from reasonloop.selfimprove.selection import Sample
from reasonloop.train.optim import OptimConfig, build_optimizer


class DPOVerifier:
    def __init__(self, base_model: torch.nn.Module, tokenizer, render: Callable[[str], str], beta: float = 0.1,
                 micro_batch_size: int = 32, forward: ForwardConfig | None = None):
        self.model = copy.deepcopy(base_model)
        self.ref = copy.deepcopy(base_model).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.render = render
        self.beta = beta
        self.micro_batch_size = micro_batch_size
        self.forward = forward

    def train(self, pairs: Sequence[tuple[Sample, Sample]], steps: int, batch_size: int, optim: OptimConfig,
              seed: int = 0) -> dict[str, float]:
        """`steps` DPO steps on random batches of (correct, incorrect) pairs; returns the last step's metrics."""
        if not pairs or steps <= 0:
            return {}
        rng = random.Random(seed)
        prompts = [self.render(c.prompt) for c, _ in pairs]
        chosen, rejected = [c.completion for c, _ in pairs], [r.completion for _, r in pairs]
        ref_c = self._logps(self.ref, prompts, chosen)
        ref_r = self._logps(self.ref, prompts, rejected)
        optimizer, scheduler = build_optimizer(self.model.parameters(), optim, steps)
        metrics: dict[str, float] = {}
        for _ in range(steps):
            idx = rng.sample(range(len(pairs)), min(batch_size, len(pairs)))
            data = PreferenceData([prompts[i] for i in idx], [chosen[i] for i in idx], [rejected[i] for i in idx])
            metrics = preference_step(self.model, self.tokenizer, data, "dpo", {"beta": self.beta}, ref_c[idx],
                                      ref_r[idx], optimizer, scheduler, optim.max_grad_norm, self.micro_batch_size,
                                      forward=self.forward)
        return {f"verifier/{k}": v for k, v in metrics.items()}

    @torch.no_grad()
    def score_texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Scores of raw (un-rendered) prompts and completions; higher means more likely correct."""
        rendered = [self.render(p) for p in prompts]
        self.model.eval()
        pol = self._logps(self.model, rendered, completions)
        ref = self._logps(self.ref, rendered, completions)
        return implicit_reward(pol, ref, self.beta).tolist()

    def _logps(self, model: torch.nn.Module, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        return sequence_logps(model, self.tokenizer, prompts, completions, self.micro_batch_size, forward=self.forward)[0]

    def scorer(self, example: Example, completions: list[str]) -> list[float]:
        """The `search.Scorer` signature, for best-of-N."""
        return self.score_texts([example.prompt] * len(completions), completions)
