"""Advantage estimators, reward normalisation and DAPO data-side pieces. Pure tensor maths.

Conventions
- Sequence-level rewards are ``[B, G]``: B prompts x G samples, prompt-major (row b*G + g of a
  flattened ``[N, T]`` batch is sample g of prompt b, as in `RolloutBatch`).
- Sequence-level estimators return ``[B, G]`` advantages; broadcast them over tokens with
  ``adv.reshape(-1, 1)`` against an ``[N, T]`` mask. Token-level estimators (REINFORCE++, GAE)
  return ``[N, T]`` with zeros at masked positions.
- A group whose rewards are all equal carries no learning signal: every group-relative estimator
  returns exact zeros for it (never NaN, never rounding noise divided by eps).
- Nothing here needs gradients; inputs are used as given (callers pass detached rewards/values).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from reasonloop.algos.aggregation import check_same_shape, check_shape, masked_whiten
from reasonloop.algos.kl import kl_estimate

STD_MODES: tuple[str, ...] = ("group", "batch", "none")


def _group_all_equal(rewards: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B, 1] bool
    return (rewards == rewards[:, :1]).all(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# GRPO family
# ---------------------------------------------------------------------------------------------


def grpo_advantages(
    rewards: torch.Tensor,  # [B, G]
    std_mode: str = "group",
    eps: float = 1e-6,
    unbiased: bool = True,
) -> torch.Tensor:  # [B, G]
    """Group-relative advantages (GRPO, Shao et al. 2024, DeepSeekMath, outcome supervision):

        A_{b,g} = (r_{b,g} - mean_g r_{b,:}) / (s + eps)

    with s chosen by `std_mode`:
      - "group": std of the group's rewards (original GRPO);
      - "batch": std of all B*G raw rewards (one scale for the whole batch; note that
        REINFORCE++-baseline instead whitens the group-centred values);
      - "none":  s = 1 and no eps, i.e. plain mean-centring (Dr.GRPO, Liu et al. 2025, which drops
        the std because it up-weights too-easy and too-hard prompts).

    `unbiased=True` uses the Bessel-corrected std (torch.std default; what TRL and verl do).
    Groups whose rewards are all equal (including G == 1) get exactly 0.
    """
    check_shape("rewards", rewards, (None, None))
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown std_mode {std_mode!r}; expected one of {STD_MODES}")
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    B, G = rewards.shape
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if std_mode == "group":
        std = rewards.std(dim=-1, keepdim=True, unbiased=unbiased) if G > 1 else torch.zeros_like(rewards)
        adv = centred / (std.nan_to_num(0.0) + eps)
    elif std_mode == "batch":
        std = rewards.std(unbiased=unbiased) if rewards.numel() > 1 else rewards.new_zeros(())
        adv = centred / (std.nan_to_num(0.0) + eps)
    else:
        adv = centred
    return torch.where(_group_all_equal(rewards), torch.zeros_like(adv), adv)


def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B, G]
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): A = r - mean_group(r).

    Same as ``grpo_advantages(rewards, std_mode="none")``. Pair it with the
    ``"seq_mean_token_sum_norm"`` aggregation mode to get the paper's full correction.
    """
    return grpo_advantages(rewards, std_mode="none")


def weighted_grpo_advantages(
    rewards: torch.Tensor,  # [B, G]
    weights: torch.Tensor,  # [B, G] >= 0, at least one > 0 per group
    std_mode: str = "group",
    eps: float = 1e-6,
) -> torch.Tensor:  # [B, G]
    """GRPO with per-sample weights in the group statistics:

        mu_b    = sum_g w_{b,g} r_{b,g} / sum_g w_{b,g}
        sigma_b = sqrt( sum_g w_{b,g} (r_{b,g} - mu_b)^2 / sum_g w_{b,g} )
        A_{b,g} = (r_{b,g} - mu_b) / (sigma_b + eps)       ("none": no division)

    Use it when samples are not equally trustworthy (e.g. a verifier's confidence, or importance
    weights of off-policy samples). Weights shape the baseline and scale, not the advantage's
    sign. With uniform weights this equals ``grpo_advantages(..., unbiased=False)``. std_mode
    "batch" uses the weighted std of all the batch's rewards (about their weighted mean), as
    GRPO's "batch" mode does unweighted. Groups with equal rewards get 0.
    """
    check_shape("rewards", rewards, (None, None))
    check_same_shape(rewards=rewards, weights=weights)
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown std_mode {std_mode!r}; expected one of {STD_MODES}")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    w = weights.to(rewards.dtype)
    w_sum = w.sum(dim=-1, keepdim=True)
    if (w_sum <= 0).any():
        raise ValueError("every group needs at least one positive weight")
    mu = (w * rewards).sum(dim=-1, keepdim=True) / w_sum
    centred = rewards - mu
    if std_mode == "group":
        adv = centred / ((w * centred**2).sum(dim=-1, keepdim=True) / w_sum).sqrt().add(eps)
    elif std_mode == "batch":
        mu_all = (w * rewards).sum() / w.sum()
        adv = centred / ((w * (rewards - mu_all) ** 2).sum() / w.sum()).sqrt().add(eps)
    else:
        adv = centred
    return torch.where(_group_all_equal(rewards), torch.zeros_like(adv), adv)


def hierarchical_grpo_advantages(
    rewards: torch.Tensor,  # [B, G]
    strata: torch.Tensor,  # [B] integer label per prompt (e.g. difficulty level)
    eps: float = 1e-6,
) -> torch.Tensor:  # [B, G]
    """GRPO with the baseline per group and the scale per stratum:

        c_{b,g} = r_{b,g} - mean_g r_{b,:}                    (group baseline, as GRPO)
        A_{b,g} = c_{b,g} / (std{ c_{b',g'} : strata[b'] == strata[b] } + eps)

    The std is the population std of the centred rewards of all prompts in the same stratum, so
    prompts of one difficulty level share one scale: a hard level's rare successes are not blown
    up per prompt (the GRPO std's difficulty bias), yet levels with different reward spreads are
    still put on a common scale. Groups with equal rewards get 0; a stratum whose groups are all
    flat gets 0.
    """
    check_shape("rewards", rewards, (None, None))
    check_shape("strata", strata, (rewards.shape[0],))
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    _, inverse = torch.unique(strata, return_inverse=True)  # [B] stratum index 0..S-1
    S = int(inverse.max()) + 1 if inverse.numel() else 0
    G = rewards.shape[1]
    sq_sum = torch.zeros(S, dtype=rewards.dtype, device=rewards.device).index_add_(0, inverse, (centred**2).sum(-1))
    count = torch.zeros(S, dtype=rewards.dtype, device=rewards.device).index_add_(
        0, inverse, torch.full((rewards.shape[0],), float(G), dtype=rewards.dtype, device=rewards.device)
    )
    std = (sq_sum / count).sqrt()[inverse].unsqueeze(-1)  # [B, 1]; the stratum mean of c is 0
    adv = centred / (std + eps)
    return torch.where(_group_all_equal(rewards), torch.zeros_like(adv), adv)


def adaptive_group_size(
    pass_rate: torch.Tensor,  # [B] estimated pass rate per prompt, in [0, 1]
    min_size: int,
    max_size: int,
) -> torch.Tensor:  # [B] long, in [min_size, max_size]
    """Group size growing linearly with difficulty d = 1 - pass_rate:

        G_b = round(min_size + (max_size - min_size) * (1 - p_b))

    Hard prompts need more samples before one succeeds (P(no success in G) = (1-p)^G), so they get
    the larger groups. Non-decreasing in difficulty; pass rates are clamped into [0, 1].
    """
    check_shape("pass_rate", pass_rate, (None,))
    if not (1 <= min_size <= max_size):
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    difficulty = 1.0 - pass_rate.to(torch.float64).clamp(0.0, 1.0)
    size = torch.round(min_size + (max_size - min_size) * difficulty)
    return size.clamp(min_size, max_size).to(torch.long)


# ---------------------------------------------------------------------------------------------
# REINFORCE family
# ---------------------------------------------------------------------------------------------


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B, G]
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024; Kool et al. 2019):

        A_{b,g} = r_{b,g} - (1 / (G-1)) * sum_{g' != g} r_{b,g'}  =  G/(G-1) * (r_{b,g} - mean_g r_{b,:})

    The baseline of each sample excludes the sample itself, so it stays unbiased. Needs G >= 2;
    equal-reward groups get exactly 0. No std scaling.
    """
    check_shape("rewards", rewards, (None, None))
    B, G = rewards.shape
    if G < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    baseline = (rewards.sum(dim=-1, keepdim=True) - rewards) / (G - 1)
    adv = rewards - baseline
    return torch.where(_group_all_equal(rewards), torch.zeros_like(adv), adv)


def pass_at_k_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:  # [B, G] -> [B, G]
    """Leave-one-out advantages of the group's max@k (pass@k for 0/1 rewards): the policy gradient of the
    expected best reward among k samples, not of the mean reward (Walder & Karkhanis 2025, "Pass@K Policy
    Optimization"; Chen et al. 2025, "Pass@k Training"). With n = G - 1 other samples sorted ascending o_0..o_{n-1}:

        s_g = mean over the (k-1)-subsets T of the others of max(r_g, max T)
            = sum_j C(j, k-2) max(r_g, o_j) / C(n, k-1)        (s_g = r_g when k = 1)
        b_g = max@k estimate of the others alone = sum_j C(j, k-1) o_j / C(n, k)
        A_g = s_g - b_g

    The baseline b_g does not depend on sample g, so the estimate stays unbiased. k = 1 is RLOO. With 0/1
    rewards a right sample earns 1 - P(k others hold a right one), and a wrong sample loses only as much as it
    lowers the chance that k samples hold a right one: a group that is mostly right is already solved at k and
    gives (almost) no signal, so the update goes to the prompts the policy rarely solves instead of narrowing
    the ones it mostly solves. `k` is clamped to G - 1 (ragged groups). No std scaling.
    """
    check_shape("rewards", rewards, (None, None))
    B, G = rewards.shape
    if G < 2:
        raise ValueError("pass@k advantages need at least 2 samples per prompt")
    if k < 1:
        raise ValueError(f"pass@k advantages need k >= 1, got {k}")
    k, n = min(k, G - 1), G - 1
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    if k == 1:
        return rloo_advantages(r)
    keep = ~torch.eye(G, dtype=torch.bool, device=r.device)
    others = r.unsqueeze(1).expand(B, G, G)[:, keep].view(B, G, n).sort(dim=-1).values  # [B, G, n]
    j = range(n)
    w_base = torch.tensor([math.comb(i, k - 1) / math.comb(n, k) for i in j], dtype=r.dtype, device=r.device)
    w_self = torch.tensor([math.comb(i, k - 2) / math.comb(n, k - 1) for i in j], dtype=r.dtype, device=r.device)
    s = (torch.maximum(r.unsqueeze(-1), others) * w_self).sum(-1)
    adv = s - (others * w_base).sum(-1)
    return torch.where(_group_all_equal(r), torch.zeros_like(adv), adv)


BASELINES: tuple[str, ...] = ("batch_mean", "moving_average", "none")


def reinforce_advantages(
    rewards: torch.Tensor,  # [B, G] (any shape works; G may be 1)
    baseline: str = "batch_mean",
    running_mean: float | None = None,
    momentum: float = 0.9,
) -> tuple[torch.Tensor, float | None]:  # ([B, G] advantages, updated running mean)
    """REINFORCE with a baseline (Williams 1992): A = r - b.

    - "batch_mean": b = mean of all rewards in the batch.
    - "moving_average": b = `running_mean`, the exponential moving average of batch mean rewards
      BEFORE this batch (so b does not depend on the current samples); on the first call
      (`running_mean=None`) b = the batch mean. The updated average
      ``momentum * running_mean + (1 - momentum) * batch_mean`` is returned for the next call;
      the function itself keeps no state.
    - "none": b = 0.

    Returns ``(advantages, new_running_mean)``; `new_running_mean` is the input passed through for
    "batch_mean"/"none". Unlike the group estimators, this does not zero an all-equal group.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError("momentum must be in [0, 1]")
    rewards = rewards.to(torch.promote_types(rewards.dtype, torch.float32))
    batch_mean = float(rewards.mean())
    if baseline == "none":
        return rewards.clone(), running_mean
    if baseline == "batch_mean":
        return rewards - batch_mean, running_mean
    b = batch_mean if running_mean is None else float(running_mean)
    new_running = batch_mean if running_mean is None else momentum * b + (1.0 - momentum) * batch_mean
    return rewards - b, new_running


def _last_valid_index(mask: torch.Tensor) -> torch.Tensor:  # [N, T] -> [N] long (-1 when empty)
    T = mask.shape[-1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=-1).values


def discounted_returns(
    token_rewards: torch.Tensor,  # [N, T]
    mask: torch.Tensor,  # [N, T] 0/1
    gamma: float = 1.0,
) -> torch.Tensor:  # [N, T]
    """Returns-to-go G_t = sum_{k >= t, valid} gamma^(#valid steps from t to k) r_k over valid tokens.

    Masked positions are transparent (skipped, not a discount step) and get 0, so left padding,
    right padding and holes are all handled.
    """
    check_same_shape(token_rewards=token_rewards, mask=mask)
    check_shape("token_rewards", token_rewards, (None, None))
    valid = mask.bool()
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        running = torch.where(valid[:, t], token_rewards[:, t] + gamma * running, running)
        out[:, t] = torch.where(valid[:, t], running, torch.zeros_like(running))
    return out


def reinforce_pp_advantages(
    rewards: torch.Tensor,  # [B, G] or [N] sequence rewards, N = B*G prompt-major
    logprobs: torch.Tensor,  # [N, T] log pi (sampling policy) of the sampled tokens
    ref_logprobs: torch.Tensor,  # [N, T] log pi_ref of the same tokens
    mask: torch.Tensor,  # [N, T] 0/1
    beta: float,
    gamma: float = 1.0,
    kl_estimator: str = "k1",
    eps: float = 1e-8,
    token_rewards: torch.Tensor | None = None,  # [N, T] extra rewards on their tokens (multi-turn: per turn)
) -> torch.Tensor:  # [N, T] token-level advantages, 0 at masked positions
    """REINFORCE++ (Hu 2025), token-level:

        r_t   = -beta * KL_t + 1[t = last valid token] * R  (+ token_rewards_t)   (KL_t: k1 by default)
        G_t   = sum_{k >= t} gamma^(k-t) r_k                         (returns-to-go)
        A_t   = (G_t - mean(G)) / (std(G) + eps)                     (global whitening over all
                                                                      valid tokens of the batch)

    No critic, no group baseline: the batch-wide whitening plays the baseline's role. If every
    valid G_t is equal (e.g. beta = 0 and all rewards equal) the result is exactly 0. A row with
    an empty mask gets all zeros and its reward is dropped.
    """
    check_shape("logprobs", logprobs, (None, None))
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    N = logprobs.shape[0]
    seq_rewards = rewards.reshape(-1)
    if seq_rewards.shape[0] != N:
        raise ValueError(f"rewards hold {seq_rewards.shape[0]} sequences but logprobs has {N} rows")
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    valid = mask.bool()
    kl = kl_estimate(logprobs.detach().to(dtype), ref_logprobs.detach().to(dtype), kl_estimator)
    extra = token_rewards
    if extra is not None:
        check_same_shape(logprobs=logprobs, token_rewards=extra)
    token_rewards = torch.where(valid, -beta * kl, torch.zeros_like(kl))
    last = _last_valid_index(mask)  # [N]
    has_token = last >= 0
    rows = torch.arange(N, device=mask.device)[has_token]
    token_rewards[rows, last[has_token]] += seq_rewards.to(dtype)[has_token]
    if extra is not None:
        token_rewards = token_rewards + torch.where(valid, extra.detach().to(dtype), torch.zeros_like(token_rewards))
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask, eps)


def gae_advantages(
    token_rewards: torch.Tensor,  # [N, T]
    values: torch.Tensor,  # [N, T] V(s_t), the critic's value before emitting token t
    mask: torch.Tensor,  # [N, T] 0/1
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([N, T] advantages, [N, T] returns)
    """Generalised Advantage Estimation (Schulman et al. 2016):

        delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last valid token = 0: terminal)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                            (the value-loss target)

    t+1 means the next VALID token: masked positions are skipped, so ragged right padding, left
    padding and holes all work. Masked positions of both outputs are 0. The outputs are detached.
    A truncated (not terminated) sequence is treated as terminal; add a bootstrap value to its last
    reward if that matters.
    """
    check_shape("token_rewards", token_rewards, (None, None))
    check_same_shape(token_rewards=token_rewards, values=values, mask=mask)
    token_rewards = token_rewards.detach()
    values = values.detach()
    valid = mask.bool()
    adv = torch.zeros_like(token_rewards)
    next_value = torch.zeros_like(token_rewards[:, 0])
    next_adv = torch.zeros_like(token_rewards[:, 0])
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * next_adv
        v = valid[:, t]
        next_adv = torch.where(v, a_t, next_adv)
        next_value = torch.where(v, values[:, t], next_value)
        adv[:, t] = torch.where(v, a_t, torch.zeros_like(a_t))
    returns = torch.where(valid, adv + values, torch.zeros_like(adv))
    return adv, returns


# ---------------------------------------------------------------------------------------------
# Reward normalisation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardNormState:
    """Running mean/variance of rewards (Chan et al. parallel update). Immutable; checkpoint it
    with ``dataclasses.asdict(state)`` and restore with ``RewardNormState(**d)``."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count > 0 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)


def update_reward_norm_state(state: RewardNormState, rewards: torch.Tensor) -> RewardNormState:
    """Merge a batch of rewards (any shape) into the running statistics; returns a new state."""
    x = rewards.detach().to(torch.float64).reshape(-1)
    n = float(x.numel())
    if n == 0:
        return state
    b_mean = float(x.mean())
    b_m2 = float(((x - b_mean) ** 2).sum())
    total = state.count + n
    delta = b_mean - state.mean
    mean = state.mean + delta * n / total
    m2 = state.m2 + b_m2 + delta**2 * state.count * n / total
    return dataclasses.replace(state, count=total, mean=mean, m2=m2)


def rank_normalize(rewards: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B, G]
    """Centred ranks within each group, in [-0.5, 0.5]: (rank - (G-1)/2) / (G-1).

    Ties share their average rank; an all-equal group (or G == 1) maps to 0. Invariant to any
    increasing transform of the rewards, so outliers cannot dominate.
    """
    check_shape("rewards", rewards, (None, None))
    B, G = rewards.shape
    if G == 1:
        return torch.zeros_like(rewards, dtype=torch.promote_types(rewards.dtype, torch.float32))
    r = rewards.unsqueeze(-1)  # [B, G, 1]
    other = rewards.unsqueeze(-2)  # [B, 1, G]
    less = (other < r).sum(-1).to(torch.float32)
    equal = (other == r).sum(-1).to(torch.float32)
    avg_rank = less + (equal - 1.0) / 2.0  # 0-based average rank
    return (avg_rank - (G - 1) / 2.0) / (G - 1)


REWARD_NORMS: tuple[str, ...] = ("none", "running", "rank")


def normalize_rewards(
    rewards: torch.Tensor,  # [B, G]
    mode: str = "none",
    state: RewardNormState | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, RewardNormState | None]:  # ([B, G], updated state)
    """Normalise rewards before computing advantages.

    - "none": returned unchanged.
    - "running": merge this batch into `state` (a fresh one when None), then
      (r - mean) / (std + eps) with the updated running statistics.
    - "rank": `rank_normalize` within each group.
    Returns ``(normalised, state)``; the state is only updated in "running" mode.
    """
    check_shape("rewards", rewards, (None, None))
    if mode == "none":
        return rewards, state
    if mode == "rank":
        return rank_normalize(rewards), state
    if mode == "running":
        new_state = update_reward_norm_state(state or RewardNormState(), rewards)
        out = (rewards.to(torch.promote_types(rewards.dtype, torch.float32)) - new_state.mean) / (new_state.std + eps)
        return out, new_state
    raise ValueError(f"unknown reward normalisation {mode!r}; expected one of {REWARD_NORMS}")


# ---------------------------------------------------------------------------------------------
# DAPO data-side pieces (Yu et al. 2025)
# ---------------------------------------------------------------------------------------------


def dynamic_sampling_keep(rewards: torch.Tensor) -> torch.Tensor:  # [B, G] -> [B] bool
    """DAPO dynamic sampling: keep a prompt only if its group's rewards are not all equal
    (all-correct or all-wrong groups give zero group-relative advantage, so no gradient)."""
    check_shape("rewards", rewards, (None, None))
    return ~_group_all_equal(rewards).squeeze(-1)


def overlong_penalty(
    lengths: torch.Tensor,  # [N] completion lengths in tokens
    max_len: int,
    cache_len: int,
    penalty: float = 1.0,
) -> torch.Tensor:  # [N] float, <= 0, to ADD to the reward
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), scaled by `penalty`:

        R_len(L) = 0                                   if L <= max_len - cache_len
                 = ((max_len - cache_len) - L) / cache_len   if max_len - cache_len < L <= max_len
                 = -1                                  if L > max_len
    """
    check_shape("lengths", lengths, (None,))
    if not (0 < cache_len <= max_len):
        raise ValueError(f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len={max_len}")
    L = lengths.to(torch.float32)
    soft = max_len - cache_len
    ramp = (soft - L) / cache_len
    out = torch.where(L <= soft, torch.zeros_like(L), torch.where(L <= max_len, ramp, -torch.ones_like(L)))
    return penalty * out


def mask_truncated(
    mask: torch.Tensor,  # [N, T] 0/1
    truncated: torch.Tensor,  # [N] bool: the sample hit the length limit
) -> torch.Tensor:  # [N, T]
    """DAPO overlong filtering: zero the loss mask of truncated samples, so a cut-off (possibly
    correct) reasoning trace is not punished. Use with a step normaliser computed from the
    RETURNED mask, so the filtered tokens also leave the denominator."""
    check_shape("mask", mask, (None, None))
    check_shape("truncated", truncated, (mask.shape[0],))
    return mask * (~truncated.bool()).to(mask.dtype).unsqueeze(-1)


def weight_positive(advantages: torch.Tensor, weight: float) -> torch.Tensor:  # any shape -> same
    """Scale the positive advantages by `weight` and leave the negative ones: the W-REINFORCE objective of Zhu et
    al. 2025 ("The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning"), where 0.1 down-weights
    the reinforcement of samples that succeeded and 0 keeps only the penalty on those that failed (their NSR). A
    penalty pushes probability off a wrong sample and lets the model's own prior re-spread it, so it sharpens less
    than a reward does: the paper's case for it is pass@k at large k."""
    return torch.where(advantages > 0, advantages * weight, advantages)
