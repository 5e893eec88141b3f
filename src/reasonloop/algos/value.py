"""Critic loss for PPO with a value head: the clipped value loss of PPO2 (OpenAI baselines).

Convention: `values` [N, T] are the critic's current predictions (with grad), `old_values` [N, T]
the predictions when the batch was collected, `returns` [N, T] the targets (e.g. from
`gae_advantages`). Per-token losses are reduced with a named aggregation mode.
"""

from __future__ import annotations

import torch

from reasonloop.algos.aggregation import aggregate, check_same_shape, check_shape, masked_mean, masked_var


def explained_variance(
    predictions: torch.Tensor,  # [N, T]
    targets: torch.Tensor,  # [N, T]
    mask: torch.Tensor,  # [N, T] 0/1
) -> torch.Tensor:  # [] detached
    """1 - Var(targets - predictions) / Var(targets) over valid tokens (1 = perfect, 0 = no better
    than predicting the mean, < 0 = worse). Returns 0 when Var(targets) is 0."""
    check_same_shape(predictions=predictions, targets=targets, mask=mask)
    with torch.no_grad():
        var_t = masked_var(targets, mask)
        var_e = masked_var(targets - predictions, mask)
        return torch.where(var_t > 0, 1.0 - var_e / var_t.clamp(min=1e-12), torch.zeros_like(var_t))


def clipped_value_loss(
    values: torch.Tensor,  # [N, T]
    old_values: torch.Tensor,  # [N, T]
    returns: torch.Tensor,  # [N, T]
    mask: torch.Tensor,  # [N, T] 0/1
    *,
    clip_range: float | None = 0.2,
    agg_mode: str = "token_mean",
    normalizer: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO2 clipped value loss (Schulman et al. 2017; OpenAI baselines ppo2):

        V_clip = V_old + clip(V - V_old, -eps, eps)
        L_t    = 0.5 * max( (V - R)^2, (V_clip - R)^2 )        (clip_range=None: 0.5 (V - R)^2)
        loss   = aggregate(L_t, mask, agg_mode, normalizer)

    Note the max: the clip only ever makes the loss larger (pessimistic), so a value that moved
    more than eps away from V_old gets no gradient towards the target from that side.

    Metrics: loss, value_clip_frac (fraction of valid tokens where the clipped term is the larger,
    i.e. the clip is active), explained_variance (of `values` w.r.t. `returns`), value_mse.
    """
    check_shape("values", values, (None, None))
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    returns = returns.detach()
    old_values = old_values.detach()
    unclipped = (values - returns) ** 2
    if clip_range is None:
        token_loss = 0.5 * unclipped
        clip_active = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        if clip_range < 0:
            raise ValueError(f"clip_range must be >= 0, got {clip_range}")
        v_clip = old_values + (values - old_values).clamp(-clip_range, clip_range)
        clipped = (v_clip - returns) ** 2
        token_loss = 0.5 * torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = aggregate(token_loss, mask, agg_mode, normalizer, max_len)
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "value_clip_frac": masked_mean(clip_active.to(values.dtype), mask),
            "explained_variance": explained_variance(values.detach(), returns, mask),
            "value_mse": masked_mean(unclipped.detach(), mask),
        }
    return loss, metrics
