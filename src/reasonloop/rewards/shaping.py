"""Potential-based reward shaping (Ng, Harada & Russell, 1999).

    r'_t = r_t + gamma * Phi(s_{t+1}) - Phi(s_t),      Phi(terminal) = 0

Over an episode the shaping terms telescope: sum_t gamma^t r'_t = sum_t gamma^t r_t - Phi(s_0), so
the optimal policy is unchanged while the per-step signal becomes denser. Here a "step" is whatever
the caller scores (a reasoning step, a token), `potentials[:, t]` is Phi of the state *before* step
t, and `mask` marks real steps of ragged sequences; the state after the last real step is terminal.
"""

from __future__ import annotations

import torch


def shape_rewards(rewards: torch.Tensor, potentials: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Shaped per-step rewards [B, T] from rewards [B, T], potentials [B, T] (before each step) and
    mask [B, T] (1 for real steps, left-aligned). Padded steps get 0."""
    if not rewards.shape == potentials.shape == mask.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)}, potentials {tuple(potentials.shape)}, mask {tuple(mask.shape)} must match [B, T]")
    m = mask.to(rewards.dtype)
    phi = potentials * m
    phi_next = torch.cat([phi[:, 1:], torch.zeros_like(phi[:, :1])], dim=1) * m  # Phi(terminal) = 0
    next_is_real = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)
    return (rewards + gamma * phi_next * next_is_real - phi) * m


def discounted_return(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """sum_t gamma^t r_t over real steps, [B]."""
    t = torch.arange(rewards.shape[1], dtype=rewards.dtype)
    return (rewards * mask.to(rewards.dtype) * gamma**t).sum(dim=1)
