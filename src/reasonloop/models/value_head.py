"""A value model for PPO: a scalar head on the policy's trunk, or on a separate critic backbone."""

from __future__ import annotations

import copy

import torch
from torch import nn

from reasonloop.models.forward import TokenBatch, policy_forward


class Critic(nn.Module):
    """V(s_t) for every completion position.

    `shared=True` reads the policy's last hidden state (one forward serves both; the value loss also
    shapes the trunk). `shared=False` deep-copies the policy at construction as an independent critic
    backbone, as in classic RLHF PPO, at the cost of a second forward/backward. `share_prompts` and
    `bucket_lengths` are the separate backbone's forward switches (models/forward.py; FSDP2 needs both off).
    """

    def __init__(self, policy: nn.Module, shared: bool = True, share_prompts: bool = True, bucket_lengths: bool = True):
        super().__init__()
        self.forward_options = {"share_prompts": share_prompts, "bucket_lengths": bucket_lengths}
        hidden = policy.config.hidden_size
        self.shared = shared
        self.backbone = None if shared else copy.deepcopy(policy)
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.head.to(next(policy.parameters()).device)

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, T, H] -> [N, T]
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def forward(self, batch: TokenBatch, policy_hidden: torch.Tensor | None = None) -> torch.Tensor:
        if self.shared:
            if policy_hidden is None:
                raise ValueError("a shared critic needs the policy's hidden states")
            return self.values_from_hidden(policy_hidden)
        hidden = policy_forward(self.backbone, batch, with_hidden=True, **self.forward_options).hidden
        return self.values_from_hidden(hidden)
