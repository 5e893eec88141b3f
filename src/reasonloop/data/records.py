"""Typed records that flow between the layers (see DESIGN.md, "One online-RL step, as data")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Example:
    """One task item: what the model sees, the reference answer, and free-form metadata.

    `meta` holds task-specific columns (e.g. `level`, `id`, `tests`); reward functions receive them
    as keyword arguments, TRL style.
    """

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.meta.get("id", self.prompt))


@dataclass
class RolloutBatch:
    """The output of `RolloutEngine.generate` for B prompts x G samples (N = B*G rows, prompt-major).

    Rows are ordered prompt-major: row `b*G + g` is sample g of prompt b.
    """

    prompt_ids: torch.Tensor  # [N, P] left-padded prompt token ids
    prompt_mask: torch.Tensor  # [N, P] 1 for real prompt tokens
    completion_ids: torch.Tensor  # [N, T] right-padded sampled tokens
    completion_mask: torch.Tensor  # [N, T] 1 for sampled tokens (incl. the stop token)
    logprobs: torch.Tensor  # [N, T] log-prob of each sampled token under the sampling distribution
    finish_reasons: list[str]  # [N] "stop" (EOS or stop string) or "length"
    completions: list[str]  # [N] decoded completion text (stop token excluded)
    group_size: int  # G

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def truncated(self) -> torch.Tensor:  # [N] bool
        return torch.tensor([r == "length" for r in self.finish_reasons])
