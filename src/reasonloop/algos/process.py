"""Token-level process rewards: credit assignment for step rewards (explicit PRM) and PRIME's implicit ones.

Both kinds arrive as ``process_rewards [N, T]`` with a ``process_mask [N, T]`` marking where a reward
sits: an explicit PRM's score for a step sits on the step's last token; PRIME's implicit reward sits on
every completion token. Rows are prompt-major groups (row b*G + g), as everywhere in `algos`.

- `process_grpo_advantages` (DeepSeekMath, Shao et al. 2024, section 4.1.3, "process supervision RL with
  GRPO"): each step reward is normalised by the mean and std of *all* step rewards of its group, and a
  token's advantage is the sum of the normalised rewards of the steps that end at or after it
  (returns-to-go, gamma 1). The sequence estimators add it to their outcome advantage
  (`algos/estimators.py`), so an explicit PRM's verdicts steer credit inside a completion while the
  verified outcome still decides the overall sign.
- `prime_advantages` (PRIME, Cui et al. 2025, eq. 5): a
  leave-one-out (RLOO) baseline for each reward source -- the outcome reward on the last token, the
  process rewards on their tokens, the baseline of a sample being the mean over the *other* samples of
  their per-token mean process reward (as verl's reference code) -- then returns-to-go and (optionally)
  whitening over the batch.
- `implicit_process_rewards` and `implicit_prm_loss`: PRIME's implicit PRM, a language model pi_phi whose
  outcome reward is r_phi(y) = beta * sum_t log(pi_phi(y_t) / pi_ref(y_t)), trained with cross-entropy
  on the verified outcome labels; its per-token terms beta * log(pi_phi(y_t) / pi_ref(y_t)) are the
  process rewards (Yuan et al. 2024, "Free process rewards without process labels").

Pure: tensors and explicit scalars in, tensors out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonloop.algos.aggregation import check_shape, masked_whiten


def _check(process_rewards: torch.Tensor, process_mask: torch.Tensor, mask: torch.Tensor,
           group_sizes: tuple[int, ...]) -> None:
    check_shape("process_rewards", process_rewards, (None, None))
    check_shape("process_mask", process_mask, tuple(process_rewards.shape))
    check_shape("mask", mask, tuple(process_rewards.shape))
    if sum(group_sizes) != process_rewards.shape[0]:
        raise ValueError(f"group sizes sum to {sum(group_sizes)} but there are {process_rewards.shape[0]} rows")


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [N, T]
    """sum_{s >= t} r_s over the masked tokens (gamma 1), 0 at masked-out positions."""
    r = token_rewards * mask
    return r.flip(-1).cumsum(-1).flip(-1) * mask


def process_grpo_advantages(
    process_rewards: torch.Tensor,  # [N, T] step rewards on the tokens where steps end, 0 elsewhere
    process_mask: torch.Tensor,  # [N, T] 1 where a step reward sits
    mask: torch.Tensor,  # [N, T] completion tokens
    group_sizes: tuple[int, ...],
    eps: float = 1e-6,
) -> torch.Tensor:  # [N, T]
    """DeepSeekMath's process-supervision advantage:

        r~_{i,k} = (r_{i,k} - mean(R_b)) / (std(R_b) + eps)      R_b: every step reward of group b
        A_{i,t}  = sum over the steps k of completion i that end at or after token t of r~_{i,k}

    std is Bessel-corrected (as GRPO's); a group whose step rewards are all equal (or hold fewer than two)
    gets 0. Tokens after a completion's last step end get 0 (no step reward lies ahead of them).
    """
    _check(process_rewards, process_mask, mask, group_sizes)
    dtype = torch.promote_types(process_rewards.dtype, torch.float32)
    pm = process_mask.to(dtype) * mask
    normalised = torch.zeros_like(process_rewards, dtype=dtype)
    row = 0
    for g in group_sizes:
        rows = slice(row, row + g)
        row += g
        marked = pm[rows].bool()
        values = process_rewards[rows][marked].to(dtype)
        if values.numel() < 2 or values.max() == values.min():  # exact 0, not rounding noise over eps
            continue
        normalised[rows] = torch.where(marked, (process_rewards[rows] - values.mean()) / (values.std() + eps), 0.0)
    return returns_to_go(normalised * pm, mask)


def _leave_one_out(values: torch.Tensor, group_sizes: tuple[int, ...]) -> torch.Tensor:  # [N]
    """For each row, the mean of `values` over the other rows of its group (0 for a group of one)."""
    out = torch.zeros_like(values)
    row = 0
    for g in group_sizes:
        v = values[row : row + g]
        if g > 1:
            out[row : row + g] = (v.sum() - v) / (g - 1)
        row += g
    return out


def prime_advantages(
    outcome_rewards: torch.Tensor,  # [N] verified outcome reward per completion
    process_rewards: torch.Tensor | None,  # [N, T] process rewards (None: outcome only)
    process_mask: torch.Tensor | None,  # [N, T] 1 where a process reward sits
    mask: torch.Tensor,  # [N, T] completion tokens
    group_sizes: tuple[int, ...],
    process_coef: float = 1.0,
    whiten: bool = True,
) -> torch.Tensor:  # [N, T]
    """PRIME's advantage (Cui et al. 2025, eq. 5), with RLOO baselines per reward source:

        o_i       = r_o(y_i) - mean_{j != i} r_o(y_j)                      on the last token of y_i
        p_{i,t}   = r_phi(y_{i,t}) - mean_{j != i} mean_s r_phi(y_{j,s})   on each marked token of y_i
        A_{i,t}   = sum_{s >= t} (o_{i,s} + process_coef * p_{i,s})        (gamma 1), whitened over the batch

    (the per-token mean in the process baseline is what verl's `masked_rloo` uses, without its extra
    (r_t - m_i)/(G-1) term; the paper writes the baseline with the other samples' sequence-level rewards). A row with no marked token has a process mean of 0.
    """
    check_shape("outcome_rewards", outcome_rewards, (mask.shape[0],))
    dtype = torch.promote_types(outcome_rewards.dtype, torch.float32)
    mask = mask.to(dtype)
    last = ((mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()).to(dtype)
    outcome = outcome_rewards.to(dtype)
    token_rewards = (outcome - _leave_one_out(outcome, group_sizes)).unsqueeze(-1) * last
    if process_rewards is not None:
        _check(process_rewards, process_mask, mask, group_sizes)
        pm = process_mask.to(dtype) * mask
        means = (process_rewards * pm).sum(-1) / pm.sum(-1).clamp(min=1)
        centred = (process_rewards - _leave_one_out(means, group_sizes).unsqueeze(-1)) * pm
        token_rewards = token_rewards + process_coef * centred
    advantages = returns_to_go(token_rewards, mask)
    if whiten:
        advantages = masked_whiten(advantages, mask)
    return advantages * mask


def implicit_process_rewards(
    prm_logprobs: torch.Tensor,  # [N, T] log pi_phi(y_t | y_<t) of the implicit PRM
    ref_logprobs: torch.Tensor,  # [N, T] log pi_ref(y_t | y_<t)
    mask: torch.Tensor,  # [N, T]
    beta: float,
) -> torch.Tensor:  # [N, T]
    """PRIME's per-token process reward beta * log(pi_phi(y_t) / pi_ref(y_t)), 0 off the mask."""
    check_shape("prm_logprobs", prm_logprobs, (None, None))
    check_shape("ref_logprobs", ref_logprobs, tuple(prm_logprobs.shape))
    return beta * (prm_logprobs - ref_logprobs) * mask


def implicit_prm_loss(
    prm_logprobs: torch.Tensor,  # [n, T] (with grad)
    ref_logprobs: torch.Tensor,  # [n, T]
    mask: torch.Tensor,  # [n, T]
    labels: torch.Tensor,  # [n] 1 for a verified-correct completion, 0 otherwise
    beta: float,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PRIME's implicit-PRM cross-entropy on outcome labels:

        r_phi(y) = beta * sum_t log(pi_phi(y_t) / pi_ref(y_t))
        L        = -(1/n) sum_i [ l_i log sigmoid(r_phi(y_i)) + (1 - l_i) log sigmoid(-r_phi(y_i)) ]

    `normalizer` replaces n (the whole step's row count, so micro-batches sum to the full-batch loss).
    Metrics: the mean sequence reward and the accuracy of sign(r_phi) against the labels.
    """
    check_shape("labels", labels, (prm_logprobs.shape[0],))
    seq = beta * ((prm_logprobs - ref_logprobs) * mask).sum(-1)
    losses = F.binary_cross_entropy_with_logits(seq, labels.to(seq.dtype), reduction="none")
    loss = losses.sum() / (normalizer if normalizer is not None else max(len(losses), 1))
    correct = ((seq.detach() > 0).to(labels.dtype) == labels).to(torch.float32)
    return loss, {"reward": seq.detach().mean(), "accuracy": correct.mean()}
