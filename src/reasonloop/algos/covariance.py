"""Entropy control by token covariance: Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of
Reinforcement Learning for Reasoning Language Models", arXiv 2505.22617).

Under a softmax policy and a policy-gradient step, the change of the policy's entropy is driven by the covariance,
over the sampled tokens, of a token's log-probability and its advantage: tokens that are already likely and are
rewarded, or unlikely and penalised, sharpen the policy (entropy falls). The paper finds a few such tokens carry most
of that covariance and proposes to restrain only them:

    Cov_t   = (log pi(o_t) - mean_s log pi(o_s)) * (A_t - mean_s A_s)       means over the batch's valid tokens
    Clip-Cov: draw k = max(floor(r * n), 1) tokens at random among those with low < Cov_t < high;
              their gradient is dropped (their token loss is multiplied by 0)
    KL-Cov:   the k = max(floor(r * n), 1) tokens of largest Cov_t get beta * |log pi_theta(o_t) - log pi_old(o_t)|
              added to their token loss

with n the number of valid tokens. The paper's settings (Qwen2.5 7B-32B, thousands of tokens per response):
r = 2e-4, window (1, 5) for Clip-Cov; r = 2e-3 (7B) or 2e-4 (32B), beta = 1 for KL-Cov.

Departure from the paper's code (verl's `clip_cov` / `kl_cov` losses): the selection is made once per rollout batch,
from the log-probs that sampled it, rather than in every micro-batch from the current ones; so the update does not
depend on the micro-batch size (the same tokens are restrained whatever the split), and Clip-Cov's random draw
happens once per step. At the first optimizer step on a batch pi_theta = pi_old, so |log ratio| and its gradient
are 0: KL-Cov only acts from the second optimizer step on a batch (`epochs` >= 2).

Conventions as in `policy_loss`: [N, T] tensors with a 0/1 mask; functions are pure.
"""

from __future__ import annotations

import torch

from reasonloop.algos.aggregation import check_same_shape, masked_mean

COV_CONTROLS: tuple[str, ...] = ("none", "clip_cov", "kl_cov")


def token_covariance(
    logprobs: torch.Tensor,  # [N, T] log pi of the sampled tokens (detached)
    advantages: torch.Tensor,  # [N, T] token advantages
    mask: torch.Tensor,  # [N, T] 0/1
) -> torch.Tensor:  # [N, T], 0 at masked positions
    """Each valid token's centred product (log pi_t - mean log pi) * (A_t - mean A), means over valid tokens."""
    check_same_shape(logprobs=logprobs, advantages=advantages, mask=mask)
    lp, adv = logprobs.detach().double(), advantages.detach().double()
    valid = mask.bool()
    cov = (lp - masked_mean(lp, valid)) * (adv - masked_mean(adv, valid))
    return torch.where(valid, cov, torch.zeros_like(cov)).to(logprobs.dtype)


def selection_size(mask: torch.Tensor, ratio: float) -> int:
    """k = max(floor(ratio * valid tokens), 1); 0 for an empty mask."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    n = int(mask.bool().sum())
    return 0 if n == 0 else max(int(ratio * n), 1)


def clip_cov_weights(
    cov: torch.Tensor,  # [N, T] from `token_covariance`
    mask: torch.Tensor,  # [N, T] 0/1
    *,
    ratio: float,
    low: float,
    high: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # [N, T] float: 0 at the drawn tokens, 1 elsewhere
    """Clip-Cov: k tokens drawn uniformly (without replacement) among the valid ones with low < Cov_t < high
    (all of them if there are fewer); pass the result as the loss's per-token `weights`."""
    check_same_shape(cov=cov, mask=mask)
    if not low < high:
        raise ValueError(f"need low < high, got {low}, {high}")
    k = selection_size(mask, ratio)
    candidates = torch.nonzero((mask.bool() & (cov > low) & (cov < high)).flatten()).squeeze(-1)
    order = torch.randperm(len(candidates), generator=generator)  # on the generator's device (a CPU one by default)
    weights = torch.ones_like(cov).flatten()
    weights[candidates[order[:k].to(candidates.device)]] = 0.0
    return weights.reshape(cov.shape)


def kl_cov_select(
    cov: torch.Tensor,  # [N, T] from `token_covariance`
    mask: torch.Tensor,  # [N, T] 0/1
    *,
    ratio: float,
) -> torch.Tensor:  # [N, T] bool: the k valid tokens of largest covariance
    """KL-Cov's selection: the top k = max(floor(ratio * n), 1) valid tokens by Cov_t (ties by position)."""
    check_same_shape(cov=cov, mask=mask)
    k = selection_size(mask, ratio)
    scores = torch.where(mask.bool(), cov, torch.full_like(cov, -torch.inf)).flatten()
    selected = torch.zeros_like(scores, dtype=torch.bool)
    selected[torch.topk(scores, k, sorted=False).indices] = True
    return selected.reshape(cov.shape)


def kl_cov_penalty(
    logprobs: torch.Tensor,  # [N, T] WITH grad
    old_logprobs: torch.Tensor,  # [N, T]
    selected: torch.Tensor,  # [N, T] bool from `kl_cov_select`
    coef: float,
) -> torch.Tensor:  # [N, T] token penalty, to aggregate like the policy loss
    """KL-Cov's per-token term beta * |log pi_theta(o_t) - log pi_old(o_t)| on the selected tokens, 0 elsewhere."""
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, selected=selected)
    if coef < 0:
        raise ValueError(f"coef must be >= 0, got {coef}")
    penalty = coef * (logprobs - old_logprobs.detach()).abs()
    return torch.where(selected.bool(), penalty, torch.zeros_like(penalty))
