"""A toy policy for direction tests: a learnable logits vector over a 5-token vocabulary.

Completion k (k = 0..4) repeats token k for LENGTHS[k] tokens (ragged), so the "policy" of a whole
completion is log pi(k) * LENGTHS[k]. Reward 1 for completion REWARDED, 0 otherwise.
"""

from __future__ import annotations

import torch

V = 5
REWARDED = 2
LENGTHS = [3, 1, 2, 3, 2]
T = max(LENGTHS)


def initial_logits() -> torch.Tensor:
    # The rewarded token is neither the most nor the least likely one at the start.
    return torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4], dtype=torch.float64, requires_grad=True)


def completions() -> tuple[torch.Tensor, torch.Tensor]:  # tokens [5, T] long, mask [5, T] float
    tokens = torch.arange(V).unsqueeze(-1).expand(V, T).clone()
    mask = (torch.arange(T).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(-1)).to(torch.float64)
    return tokens, mask


def token_logprobs(theta: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # [N, T]
    return torch.log_softmax(theta, dim=-1)[tokens]


def rewards() -> torch.Tensor:  # [1, 5]: one prompt, five samples
    r = torch.zeros(1, V, dtype=torch.float64)
    r[0, REWARDED] = 1.0
    return r


def prob(theta: torch.Tensor, k: int = REWARDED) -> float:
    return float(torch.softmax(theta.detach(), dim=-1)[k])


def sgd_step(theta: torch.Tensor, loss: torch.Tensor, lr: float = 0.5) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, theta)
    return (theta.detach() - lr * grad).requires_grad_(True)
