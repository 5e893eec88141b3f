"""KL estimators from per-token log-probs, KL-in-reward, and KL coefficient controllers.

Estimators follow J. Schulman, "Approximating KL divergence" (blog, 2020). Convention: the tokens
were sampled from pi (the policy being trained, or the sampler), and we estimate

    KL(pi || pi_ref) = E_{x ~ pi} [ log pi(x) - log pi_ref(x) ]

per token from `logprobs = log pi(x_t)` and `ref_logprobs = log pi_ref(x_t)`. With
log_ratio = logprobs - ref_logprobs and r = pi_ref / pi = exp(-log_ratio):

    k1 = log_ratio                 unbiased, high variance, can be negative
    k2 = 0.5 * log_ratio ** 2      biased (low for close policies), low variance, >= 0
    k3 = (r - 1) - log r           unbiased, low variance, >= 0   (used by GRPO as its KL loss)

All three are differentiable through `logprobs` (and `ref_logprobs`), so they serve both as a loss
term (GRPO places k3 in the loss) and, detached, as a reward penalty (PPO-RLHF places k1 in the
reward, see `kl_penalty_in_reward`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from reasonloop.algos.aggregation import check_same_shape

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

# exp() of a log-ratio larger than this overflows float16/bfloat16 and is meaningless anyway.
_LOG_RATIO_CLAMP = 20.0


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(x) - log pi_ref(x), elementwise (any shape)."""
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (log pi(x) - log pi_ref(x))^2, elementwise (any shape)."""
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - logp) - 1 - (ref - logp), elementwise (any shape).

    The exponent is clamped to [-20, 20] so that a stray pair of log-probs cannot overflow; inside
    that range the value is exact.
    """
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_r = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.exp(log_r) - 1.0 - log_r


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate with the named estimator ("k1", "k2" or "k3")."""
    if estimator == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if estimator == "k2":
        return kl_k2(logprobs, ref_logprobs)
    if estimator == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def kl_penalty_in_reward(
    token_rewards: torch.Tensor,  # [N, T]
    logprobs: torch.Tensor,  # [N, T] log pi of the sampled tokens
    ref_logprobs: torch.Tensor,  # [N, T] log pi_ref of the same tokens
    mask: torch.Tensor,  # [N, T] 0/1
    beta: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:  # ([N, T] penalised rewards, [N, T] per-token KL)
    """r'_t = r_t - beta * KL_t on valid tokens (Ziegler et al. 2019; Ouyang et al. 2022).

    The KL is detached: a reward is a constant for the policy gradient. Masked positions of both
    outputs are 0. k1 is the classic choice (REINFORCE++, PPO-RLHF).
    """
    check_same_shape(token_rewards=token_rewards, logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    m = mask.to(token_rewards.dtype)
    kl = kl_estimate(logprobs.detach(), ref_logprobs.detach(), estimator) * m
    return token_rewards * m - beta * kl, kl


# ---------------------------------------------------------------------------------------------
# Controllers: tiny immutable state. `update` returns a NEW controller; `state_dict()` /
# `from_state_dict()` make them checkpointable.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> FixedKLController:
        """Returns self: the coefficient never changes."""
        return self

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FixedKLController:
        return cls(**state)

    def load_state_dict(self, state: dict[str, Any]) -> FixedKLController:
        """Return a NEW controller holding `state` (controllers are immutable; use the result)."""
        return type(self).from_state_dict(state)


@dataclass(frozen=True)
class AdaptiveKLController:
    """Target-KL controller of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences"):

        e     = clip((KL_current - KL_target) / KL_target, -0.2, 0.2)
        beta <- beta * (1 + e * n_steps / horizon)

    `value` is beta; `target` the KL aimed for (nats per sequence or per token, whatever the caller
    measures); `horizon` the number of samples over which to adapt; `n_steps` the samples seen since
    the last update (e.g. the batch size).
    """

    value: float
    target: float
    horizon: float

    def __post_init__(self) -> None:
        if self.target <= 0 or self.horizon <= 0:
            raise ValueError("AdaptiveKLController needs target > 0 and horizon > 0")

    def update(self, current_kl: float, n_steps: int) -> AdaptiveKLController:
        error = min(max((float(current_kl) - self.target) / self.target, -0.2), 0.2)
        return dataclasses.replace(self, value=self.value * (1.0 + error * n_steps / self.horizon))

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> AdaptiveKLController:
        return cls(**state)

    def load_state_dict(self, state: dict[str, Any]) -> AdaptiveKLController:
        """Return a NEW controller holding `state` (controllers are immutable; use the result)."""
        return type(self).from_state_dict(state)
