"""Policy-gradient surrogate losses: PPO-clip (clip-higher, dual-clip, token or sequence ratio),
PPO-penalty with its adaptive coefficient, and truncated importance-sampling weights.

Conventions
- `logprobs` [N, T]: log pi_theta of the sampled tokens, WITH grad. `old_logprobs` [N, T]: log
  pi_old (the policy that produced the batch, as the trainer computes it), no grad.
- `advantages`: [N] per sequence (broadcast over tokens) or [N, T] per token.
- Losses are minimised. Per-token losses are reduced with a named aggregation mode
  (`reasonloop.algos.aggregation`); pass the step's `normalizer` from `step_normalizer` when
  micro-batching, so that summed micro-batch losses equal the whole-batch loss.
- Metrics are 0-dim detached tensors (no device sync); they are means over this micro-batch's
  valid tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from reasonloop.algos.aggregation import aggregate, check_same_shape, check_shape, masked_mean
from reasonloop.algos.kl import kl_estimate

RATIO_LEVELS: tuple[str, ...] = ("token", "sequence")


def _token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if advantages.dim() == 1:
        check_shape("advantages", advantages, (like.shape[0],))
        return advantages.unsqueeze(-1).expand_as(like)
    check_same_shape(advantages=advantages, logprobs=like)
    return advantages


def _log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """[N, T] log importance ratio; "sequence" = the row's mean token log-ratio (GSPO)."""
    log_ratio = logprobs - old_logprobs
    if level == "token":
        return log_ratio
    if level == "sequence":
        return masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1).expand_as(log_ratio)
    raise ValueError(f"unknown ratio level {level!r}; expected one of {RATIO_LEVELS}")


def ppo_clip_loss(
    logprobs: torch.Tensor,  # [N, T]
    old_logprobs: torch.Tensor,  # [N, T]
    advantages: torch.Tensor,  # [N] or [N, T]
    mask: torch.Tensor,  # [N, T] 0/1
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ratio_level: str = "token",
    agg_mode: str = "token_mean",
    normalizer: float | None = None,
    max_len: int | None = None,
    weights: torch.Tensor | None = None,  # [N, T] per-token multiplier (e.g. `tis_weights`)
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017), per token, then aggregated:

        rho_t  = exp(log pi_theta(o_t) - log pi_old(o_t))                      ratio_level="token"
               = exp( mean_{t' valid} [log pi_theta(o_t') - log pi_old(o_t')] )  ratio_level="sequence"
        L_t    = -min( rho_t A_t, clip(rho_t, 1 - clip_low, 1 + clip_high) A_t )
        dual-clip (Ye et al. 2020), only where A_t < 0:   L_t = min( L_t, -c A_t )   (c = dual_clip > 1)
        loss   = aggregate(w_t * L_t, mask, agg_mode, normalizer)

    Separate `clip_low`/`clip_high` give DAPO's clip-higher (e.g. 0.2 / 0.28). The sequence ratio is
    GSPO's (Zheng et al. 2025): one length-normalised ratio per sequence, clipped as a whole (use
    its small clip ranges, ~3e-4 / 4e-4). The dual clip bounds the loss of a negative-advantage
    token whose ratio has exploded (ratio > c), where plain PPO's loss is unbounded.

    Metrics: loss, clip_frac_low (ratio < 1-clip_low with A < 0: clipped from below),
    clip_frac_high (ratio > 1+clip_high with A > 0), dual_clip_frac (A < 0 and ratio > c),
    approx_kl = mean k3 estimate of KL(pi_old || pi_theta) on the batch tokens, ratio_mean.
    """
    check_shape("logprobs", logprobs, (None, None))
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    if clip_low < 0 or clip_high < 0 or clip_low >= 1:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    adv = _token_advantages(advantages, logprobs).to(logprobs.dtype)
    old_logprobs = old_logprobs.detach()
    log_ratio = _log_ratio(logprobs, old_logprobs, mask, ratio_level)
    ratio = torch.exp(log_ratio)
    unclipped = -ratio * adv
    clipped = -ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    token_loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        token_loss = torch.where(adv < 0, torch.minimum(token_loss, -dual_clip * adv), token_loss)
    if weights is not None:
        check_same_shape(weights=weights, logprobs=logprobs)
        token_loss = token_loss * weights.detach()
    loss = aggregate(token_loss, mask, agg_mode, normalizer, max_len)

    with torch.no_grad():
        valid = mask.bool()
        r = ratio.detach()
        f = lambda cond: masked_mean(cond.to(logprobs.dtype), valid)  # noqa: E731
        metrics = {
            "loss": loss.detach(),
            "clip_frac_low": f((r < 1.0 - clip_low) & (adv < 0)),
            "clip_frac_high": f((r > 1.0 + clip_high) & (adv > 0)),
            "dual_clip_frac": f((adv < 0) & (r > dual_clip)) if dual_clip is not None else r.new_zeros(()),
            "approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs.detach(), "k3"), valid),
            "ratio_mean": masked_mean(r, valid),
        }
    return loss, metrics


def ppo_penalty_loss(
    logprobs: torch.Tensor,  # [N, T]
    old_logprobs: torch.Tensor,  # [N, T]
    advantages: torch.Tensor,  # [N] or [N, T]
    mask: torch.Tensor,  # [N, T] 0/1
    *,
    kl_coef: float,
    kl_estimator: str = "k3",
    agg_mode: str = "token_mean",
    normalizer: float | None = None,
    max_len: int | None = None,
    weights: torch.Tensor | None = None,  # [N, T]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO with an adaptive KL penalty instead of clipping (Schulman et al. 2017, section 4):

        L_t  = -rho_t A_t + beta * KL_t(pi_old || pi_theta),   rho_t = pi_theta(o_t) / pi_old(o_t)
        loss = aggregate(w_t * L_t, mask, agg_mode, normalizer)

    KL_t is estimated from the tokens sampled by pi_old (k3 by default: (rho - 1) - log rho >= 0).
    Adapt beta between steps with `PPOPenaltyController`. Metrics: loss, pg_loss (the surrogate
    part, aggregated the same way), kl (token mean of KL_t), ratio_mean.
    """
    check_shape("logprobs", logprobs, (None, None))
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    adv = _token_advantages(advantages, logprobs).to(logprobs.dtype)
    old_logprobs = old_logprobs.detach()
    ratio = torch.exp(logprobs - old_logprobs)
    # KL(pi_old || pi_theta) with samples from pi_old: the "policy" of the estimator is pi_old.
    kl = kl_estimate(old_logprobs, logprobs, kl_estimator)
    pg = -ratio * adv
    w = torch.ones_like(pg) if weights is None else weights.detach()
    if weights is not None:
        check_same_shape(weights=weights, logprobs=logprobs)
    loss = aggregate(w * (pg + kl_coef * kl), mask, agg_mode, normalizer, max_len)
    with torch.no_grad():
        metrics = {
            "loss": loss.detach(),
            "pg_loss": aggregate(w * pg, mask, agg_mode, normalizer, max_len).detach(),
            "kl": masked_mean(kl.detach(), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask),
        }
    return loss, metrics


@dataclass(frozen=True)
class PPOPenaltyController:
    """The adaptive penalty rule of Schulman et al. 2017 (section 4), with d the measured KL:

        d < target / 1.5  ->  beta <- beta / 2
        d > target * 1.5  ->  beta <- beta * 2

    Immutable: `update` returns a new controller; `state_dict()` / `from_state_dict()` for
    checkpoints. (For the smoother Ziegler et al. rule see `kl.AdaptiveKLController`.)
    """

    value: float
    target: float

    def update(self, current_kl: float) -> PPOPenaltyController:
        d = float(current_kl)
        if d < self.target / 1.5:
            return dataclasses.replace(self, value=self.value / 2.0)
        if d > self.target * 1.5:
            return dataclasses.replace(self, value=self.value * 2.0)
        return self

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PPOPenaltyController:
        return cls(**state)

    def load_state_dict(self, state: dict[str, Any]) -> PPOPenaltyController:
        """Return a NEW controller holding `state` (controllers are immutable; use the result)."""
        return type(self).from_state_dict(state)


def tis_weights(
    trainer_old_logprobs: torch.Tensor,  # [N, T] log pi_old as the trainer computes it
    sampler_logprobs: torch.Tensor,  # [N, T] log-probs the rollout engine reported
    mask: torch.Tensor,  # [N, T] 0/1
    cap: float = 2.0,
) -> torch.Tensor:  # [N, T] detached, 0 at masked positions
    """Truncated importance-sampling correction for a sampler/trainer mismatch (e.g. vLLM in bf16
    vs the FSDP trainer; Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"; truncation as in Espeholt et al. 2018, IMPALA):

        w_t = min( pi_trainer(o_t) / pi_sampler(o_t), cap )

    Pass the result as ``weights=`` to `ppo_clip_loss`. Detached: it is a correction, not a path
    for gradients.
    """
    check_shape("trainer_old_logprobs", trainer_old_logprobs, (None, None))
    check_same_shape(trainer_old_logprobs=trainer_old_logprobs, sampler_logprobs=sampler_logprobs, mask=mask)
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    log_w = (trainer_old_logprobs.detach() - sampler_logprobs.detach()).clamp(max=20.0)
    w = torch.exp(log_w).clamp(max=cap)
    return torch.where(mask.bool(), w, torch.zeros_like(w))

