"""Preference-optimisation losses: DPO, cDPO, robust DPO, IPO, SPIN, KTO, ORPO, SimPO.

Conventions
- Inputs are per-sequence log-probs of the completion given the prompt, shape [B]: SUMMED over
  completion tokens unless a function says otherwise (ORPO takes token-averaged log-probs; SimPO
  takes sums and the lengths). "policy" tensors carry grad; "ref" tensors are treated as constants.
- Implicit reward of a completion: r(y) = beta * (log pi(y|x) - log pi_ref(y|x)) (DPO).
- Reduction: sum of per-pair losses / `normalizer`, which defaults to the number of pairs in this
  call (the mean). When micro-batching, pass the number of pairs in the whole step, so summed
  micro-batch losses (and gradients) equal the whole-batch loss.
- Metrics (0-dim detached tensors, means over this call's pairs): loss, chosen_reward,
  rejected_reward, reward_margin (chosen - rejected), reward_accuracy (fraction with chosen
  reward strictly above rejected).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reasonloop.algos.aggregation import check_same_shape, check_shape


def _check_pairs(**tensors: torch.Tensor) -> None:
    first = next(iter(tensors.values()))
    check_shape(next(iter(tensors)), first, (None,))
    check_same_shape(**tensors)


def _reduce(per_pair: torch.Tensor, normalizer: float | None) -> torch.Tensor:
    n = float(per_pair.shape[0]) if normalizer is None else float(normalizer)
    return per_pair.sum() / max(n, 1.0)


def _metrics(loss: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        c, r = chosen_rewards.detach(), rejected_rewards.detach()
        return {
            "loss": loss.detach(),
            "chosen_reward": c.mean() if c.numel() else c.new_zeros(()),
            "rejected_reward": r.mean() if r.numel() else r.new_zeros(()),
            "reward_margin": (c - r).mean() if c.numel() == r.numel() and c.numel() else c.new_zeros(()),
            "reward_accuracy": (c > r).to(c.dtype).mean() if c.numel() == r.numel() and c.numel() else c.new_zeros(()),
        }


def _dpo_logits(pc, pr, rc, rr, beta):  # -> (z, chosen_rewards, rejected_rewards), all [B]
    chosen_rewards = beta * (pc - rc.detach())
    rejected_rewards = beta * (pr - rr.detach())
    return chosen_rewards - rejected_rewards, chosen_rewards, rejected_rewards


def dpo_loss(
    policy_chosen_logps: torch.Tensor,  # [B]
    policy_rejected_logps: torch.Tensor,  # [B]
    ref_chosen_logps: torch.Tensor,  # [B]
    ref_rejected_logps: torch.Tensor,  # [B]
    beta: float = 0.1,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO, sigmoid loss (Rafailov et al. 2023):

        z    = beta * [ (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)) ]
        loss = -log sigmoid(z)

    At z = 0 the loss is log 2 and dL/dz = -1/2, so dL/d(log pi(y_w)) = -beta/2: the gradient
    vanishes linearly as beta -> 0.
    """
    _check_pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    z, cr, rr = _dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    loss = _reduce(-F.logsigmoid(z), normalizer)
    return loss, _metrics(loss, cr, rr)


def cdpo_loss(
    policy_chosen_logps: torch.Tensor,  # [B]
    policy_rejected_logps: torch.Tensor,  # [B]
    ref_chosen_logps: torch.Tensor,  # [B]
    ref_rejected_logps: torch.Tensor,  # [B]
    beta: float = 0.1,
    label_smoothing: float = 0.1,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): each label is
    flipped with probability eps, giving label-smoothed binary cross-entropy:

        loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z)

    With eps = 0 this is exactly `dpo_loss`. Its minimum is at finite z = log((1-eps)/eps).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    _check_pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    z, cr, rr = _dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    eps = label_smoothing
    per_pair = -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    loss = _reduce(per_pair, normalizer)
    return loss, _metrics(loss, cr, rr)


def robust_dpo_loss(
    policy_chosen_logps: torch.Tensor,  # [B]
    policy_rejected_logps: torch.Tensor,  # [B]
    ref_chosen_logps: torch.Tensor,  # [B]
    ref_rejected_logps: torch.Tensor,  # [B]
    beta: float = 0.1,
    label_smoothing: float = 0.1,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Robust DPO (Chowdhury et al. 2024, "Provably robust DPO"), for labels flipped with known
    rate eps < 1/2: an unbiased estimate of the clean-label loss,

        loss = [ -(1 - eps) log sigmoid(z) + eps log sigmoid(-z) ] / (1 - 2 eps)

    Unlike cDPO it has no finite optimum: the loss keeps decreasing in z (unbounded below, slope
    -eps/(1-2eps) for large z). With eps = 0 it equals `dpo_loss`.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    _check_pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    z, cr, rr = _dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    eps = label_smoothing
    per_pair = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
    loss = _reduce(per_pair, normalizer)
    return loss, _metrics(loss, cr, rr)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,  # [B]
    policy_rejected_logps: torch.Tensor,  # [B]
    ref_chosen_logps: torch.Tensor,  # [B]
    ref_rejected_logps: torch.Tensor,  # [B]
    beta: float = 0.1,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Azar et al. 2023, "A general theoretical paradigm ..."), beta playing the paper's tau:

        h    = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
        loss = (h - 1 / (2 beta))^2

    Minimum 0 at h = 1/(2 beta): IPO regresses the log-ratio margin to a finite target instead of
    pushing it to infinity. The paper (and TRL) apply it to token-AVERAGED log-probs; pass those if
    you want that convention. Rewards in the metrics are beta * log-ratio, as for DPO.
    """
    if beta <= 0:
        raise ValueError("IPO needs beta > 0")
    _check_pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    z, cr, rr = _dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    h = z / beta
    loss = _reduce((h - 1.0 / (2.0 * beta)) ** 2, normalizer)
    return loss, _metrics(loss, cr, rr)


def spin_loss(
    policy_real_logps: torch.Tensor,  # [B] log pi of the ground-truth (SFT data) completion
    policy_generated_logps: torch.Tensor,  # [B] log pi of the model's own previous-iteration sample
    ref_real_logps: torch.Tensor,  # [B] under the previous iterate pi_{t}
    ref_generated_logps: torch.Tensor,  # [B]
    beta: float = 0.1,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPIN, self-play fine-tuning (Chen et al. 2024) with the logistic loss:

        loss = -log sigmoid( beta * [ log pi/pi_t (y_real) - log pi/pi_t (y_generated) ] )

    This is `dpo_loss` with chosen = the real data, rejected = the model's own generation, and the
    reference = the previous iterate. Only the naming differs; the iteration lives in the recipe.
    """
    return dpo_loss(policy_real_logps, policy_generated_logps, ref_real_logps, ref_generated_logps, beta, normalizer)


def kto_loss(
    policy_chosen_logps: torch.Tensor,  # [Bc] desirable completions
    policy_rejected_logps: torch.Tensor,  # [Br] undesirable completions (Br may differ from Bc)
    ref_chosen_logps: torch.Tensor,  # [Bc]
    ref_rejected_logps: torch.Tensor,  # [Br]
    kl_ref: float | torch.Tensor,  # the reference point z_0 (see below)
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO, Kahneman-Tversky optimisation (Ethayarajh et al. 2024), unpaired:

        r(y)  = log pi(y|x) - log pi_ref(y|x)
        z_0   = max(kl_ref, 0), detached
        L(y)  = lambda_D * (1 - sigmoid(beta (r(y) - z_0)))   for desirable y
              = lambda_U * (1 - sigmoid(beta (z_0 - r(y))))   for undesirable y
        loss  = sum_y L(y) / normalizer   (default: Bc + Br)

    `kl_ref` is the batch estimate of KL(pi || pi_ref) the paper computes from mismatched
    (x, y') pairs; computing it needs a model, so the caller passes it in (0 is a common cheap
    choice). Metrics: chosen/rejected rewards are beta * r(y) means; with unpaired data the
    reward_margin is the difference of those means, and there is no reward_accuracy.
    """
    check_shape("policy_chosen_logps", policy_chosen_logps, (None,))
    check_shape("policy_rejected_logps", policy_rejected_logps, (None,))
    check_same_shape(policy_chosen_logps=policy_chosen_logps, ref_chosen_logps=ref_chosen_logps)
    check_same_shape(policy_rejected_logps=policy_rejected_logps, ref_rejected_logps=ref_rejected_logps)
    z0 = torch.as_tensor(kl_ref, dtype=policy_chosen_logps.dtype, device=policy_chosen_logps.device).detach().clamp(min=0)
    r_c = policy_chosen_logps - ref_chosen_logps.detach()
    r_r = policy_rejected_logps - ref_rejected_logps.detach()
    loss_c = desirable_weight * (1.0 - torch.sigmoid(beta * (r_c - z0)))
    loss_r = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r_r)))
    n = float(r_c.shape[0] + r_r.shape[0]) if normalizer is None else float(normalizer)
    loss = (loss_c.sum() + loss_r.sum()) / max(n, 1.0)
    with torch.no_grad():
        cr, rr = beta * r_c.detach(), beta * r_r.detach()
        metrics = {
            "loss": loss.detach(),
            "chosen_reward": cr.mean() if cr.numel() else cr.new_zeros(()),
            "rejected_reward": rr.mean() if rr.numel() else rr.new_zeros(()),
            "kl_ref": z0,
        }
        metrics["reward_margin"] = metrics["chosen_reward"] - metrics["rejected_reward"]
    return loss, metrics


def _log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p < 0, stably: log p - log(1 - exp(log p))."""
    return avg_logps - torch.log(-torch.expm1(avg_logps))


def orpo_loss(
    policy_chosen_logps: torch.Tensor,  # [B] token-AVERAGED log-probs of the chosen completion
    policy_rejected_logps: torch.Tensor,  # [B] token-AVERAGED log-probs of the rejected completion
    lam: float = 0.1,
    chosen_nll: torch.Tensor | None = None,  # [B] per-pair SFT loss of the chosen; default -avg logp
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO, odds-ratio preference optimisation (Hong et al. 2024), reference-free:

        odds(y) = P(y) / (1 - P(y)),   P(y) = exp(mean_t log pi(y_t | ...))
        L_OR    = -log sigmoid( log odds(y_w) - log odds(y_l) )
        loss    = L_NLL(y_w) + lam * L_OR

    L_NLL defaults to -mean_t log pi(y_w) per pair (the token-averaged SFT loss of the chosen);
    pass `chosen_nll` to use another (e.g. over the prompt too). Log-probs must be < 0. Metrics:
    rewards are lam * avg log-probs (TRL's convention), plus nll and log_odds_ratio.
    """
    _check_pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
    if chosen_nll is None:
        chosen_nll = -policy_chosen_logps
    check_same_shape(chosen_nll=chosen_nll, policy_chosen_logps=policy_chosen_logps)
    log_odds_ratio = _log_odds(policy_chosen_logps) - _log_odds(policy_rejected_logps)
    per_pair = chosen_nll - lam * F.logsigmoid(log_odds_ratio)
    loss = _reduce(per_pair, normalizer)
    metrics = _metrics(loss, lam * policy_chosen_logps, lam * policy_rejected_logps)
    metrics["nll"] = chosen_nll.detach().mean()
    metrics["log_odds_ratio"] = log_odds_ratio.detach().mean()
    return loss, metrics


def simpo_loss(
    policy_chosen_logps: torch.Tensor,  # [B] SUMMED log-probs of the chosen completion
    policy_rejected_logps: torch.Tensor,  # [B] SUMMED log-probs of the rejected completion
    chosen_lengths: torch.Tensor,  # [B] number of completion tokens (> 0)
    rejected_lengths: torch.Tensor,  # [B]
    beta: float = 2.0,
    gamma: float = 0.5,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPO (Meng et al. 2024), reference-free and length-normalised, with target margin gamma:

        r(y) = beta / |y| * log pi(y|x)
        loss = -log sigmoid( r(y_w) - r(y_l) - gamma )

    `gamma` is the paper's absolute margin (TRL's `gamma_beta_ratio` is gamma / beta).
    """
    _check_pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    if (chosen_lengths <= 0).any() or (rejected_lengths <= 0).any():
        raise ValueError("SimPO lengths must be positive")
    cr = beta * policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype)
    rr = beta * policy_rejected_logps / rejected_lengths.to(policy_rejected_logps.dtype)
    loss = _reduce(-F.logsigmoid(cr - rr - gamma), normalizer)
    return loss, _metrics(loss, cr, rr)
