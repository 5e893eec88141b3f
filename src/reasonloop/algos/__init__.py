"""Pure RL / preference maths: advantages, policy losses, KL, aggregation, value, entropy.

Registries (names -> functions):

ADVANTAGE_ESTIMATORS  (`algos/estimators.py`; all one signature)
    f(AdvantageInput) -> AdvantageOutput: "grpo", "dr_grpo", "grpo_difficulty", "grpo_hierarchical",
    "rloo", "reinforce", "reinforce_pp", "gae"; add your own with `register_advantage(name)`.
    The raw formulas they call are the functions of `algos/advantages.py`.

PREFERENCE_LOSSES  (all return (loss, metrics))
    "dpo", "cdpo", "robust_dpo", "ipo", "spin":
        f(policy_chosen_logps[B], policy_rejected_logps[B], ref_chosen_logps[B],
          ref_rejected_logps[B], beta, ...)
    "kto":   f(policy_chosen[Bc], policy_rejected[Br], ref_chosen[Bc], ref_rejected[Br], kl_ref, beta, ...)
    "orpo":  f(policy_chosen_avg_logps[B], policy_rejected_avg_logps[B], lam, ...)   (no reference)
    "simpo": f(policy_chosen_logps[B], policy_rejected_logps[B], chosen_lengths[B],
               rejected_lengths[B], beta, gamma, ...)                              (no reference)
"""

from __future__ import annotations

from collections.abc import Callable

from reasonloop.algos.advantages import (
    adaptive_group_size,
    discounted_returns,
    dr_grpo_advantages,
    dynamic_sampling_keep,
    gae_advantages,
    grpo_advantages,
    hierarchical_grpo_advantages,
    mask_truncated,
    normalize_rewards,
    overlong_penalty,
    rank_normalize,
    reinforce_advantages,
    reinforce_pp_advantages,
    RewardNormState,
    rloo_advantages,
    update_reward_norm_state,
    weighted_grpo_advantages,
)
from reasonloop.algos.aggregation import AGGREGATION_MODES, aggregate, step_normalizer
from reasonloop.algos.covariance import clip_cov_weights, kl_cov_penalty, kl_cov_select, token_covariance
from reasonloop.algos.entropy import entropy_from_logits
from reasonloop.algos.estimators import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInput,
    AdvantageOutput,
    estimate,
    register_advantage,
    sequence_estimator,
)
from reasonloop.algos.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty_in_reward,
)
from reasonloop.algos.policy_loss import PPOPenaltyController, ppo_clip_loss, ppo_penalty_loss, tis_weights
from reasonloop.algos.preference import (
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
    spin_loss,
)
from reasonloop.algos.value import clipped_value_loss, explained_variance

PREFERENCE_LOSSES: dict[str, Callable] = {
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "robust_dpo": robust_dpo_loss,
    "ipo": ipo_loss,
    "spin": spin_loss,
    "kto": kto_loss,
    "orpo": orpo_loss,
    "simpo": simpo_loss,
}

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATION_MODES",
    "PREFERENCE_LOSSES",
    "AdaptiveKLController",
    "AdvantageInput",
    "AdvantageOutput",
    "FixedKLController",
    "PPOPenaltyController",
    "RewardNormState",
    "adaptive_group_size",
    "aggregate",
    "cdpo_loss",
    "clip_cov_weights",
    "clipped_value_loss",
    "discounted_returns",
    "dpo_loss",
    "dr_grpo_advantages",
    "dynamic_sampling_keep",
    "entropy_from_logits",
    "estimate",
    "explained_variance",
    "gae_advantages",
    "grpo_advantages",
    "hierarchical_grpo_advantages",
    "ipo_loss",
    "kl_cov_penalty",
    "kl_cov_select",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty_in_reward",
    "kto_loss",
    "mask_truncated",
    "normalize_rewards",
    "orpo_loss",
    "overlong_penalty",
    "ppo_clip_loss",
    "ppo_penalty_loss",
    "rank_normalize",
    "register_advantage",
    "reinforce_advantages",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sequence_estimator",
    "robust_dpo_loss",
    "simpo_loss",
    "spin_loss",
    "step_normalizer",
    "tis_weights",
    "token_covariance",
    "update_reward_norm_state",
    "weighted_grpo_advantages",
]
