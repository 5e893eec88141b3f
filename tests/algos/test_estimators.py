"""The advantage-estimator registry: each name runs the maths of algos/advantages.py, and the shared
wrapper (KL in the reward, reward normalisation, ragged groups, broadcast over tokens) is exact."""

import pytest
import torch

from reasonloop.algos import advantages as adv
from reasonloop.algos.estimators import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInput,
    estimate,
    register_advantage,
    sequence_estimator,
)
from reasonloop.algos.kl import kl_estimate

D = torch.float64
MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=D)  # 2 prompts x 2 samples


def test_grpo_hand_computed_and_broadcast_over_tokens():
    out = estimate("grpo", AdvantageInput(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=D), (2, 2), MASK))
    a = 0.5 / (2 ** -0.5 + 1e-6)  # (r - mean) / (Bessel std of {1, 0} = 1/sqrt(2) + eps)
    expected = torch.tensor([a, -a, 0.0, 0.0], dtype=D).unsqueeze(-1) * MASK  # the flat group gets exact zeros
    torch.testing.assert_close(out.advantages, expected)


@pytest.mark.parametrize("name, fn", [
    ("grpo", lambda r: adv.grpo_advantages(r, "group")),
    ("dr_grpo", adv.dr_grpo_advantages),
    ("rloo", adv.rloo_advantages),
])
def test_sequence_estimators_equal_their_formula(name, fn):
    torch.manual_seed(0)
    rewards, mask = torch.rand(12, dtype=D), torch.ones(12, 5, dtype=D)
    out = estimate(name, AdvantageInput(rewards, (4, 4, 4), mask))
    torch.testing.assert_close(out.advantages, fn(rewards.view(3, 4)).reshape(-1, 1) * mask)


def test_kl_in_reward_is_subtracted_per_sequence_before_the_estimator():
    torch.manual_seed(1)
    rewards, lp, ref = torch.rand(4, dtype=D), -torch.rand(4, 3, dtype=D), -torch.rand(4, 3, dtype=D)
    out = estimate("rloo", AdvantageInput(rewards, (2, 2), MASK, logprobs=lp, ref_logprobs=ref, kl_coef=0.1,
                                          kl_estimator="k1", kl_in_reward=True))
    shaped = rewards - 0.1 * ((lp - ref) * MASK).sum(-1)  # k1 = log pi - log pi_ref, masked tokens excluded
    torch.testing.assert_close(out.advantages, adv.rloo_advantages(shaped.view(2, 2)).reshape(-1, 1) * MASK)


def test_ragged_groups_are_estimated_one_at_a_time():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=D)
    out = estimate("grpo", AdvantageInput(rewards, (2, 3), torch.ones(5, 1, dtype=D)))
    expected = torch.cat([adv.grpo_advantages(rewards[:2].view(1, 2)).view(-1),
                          adv.grpo_advantages(rewards[2:].view(1, 3)).view(-1)])
    torch.testing.assert_close(out.advantages.view(-1), expected)


def test_running_reward_norm_and_reinforce_baseline_carry_their_state():
    r1, r2 = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D), torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=D)
    first = estimate("reinforce", AdvantageInput(r1, (2, 2), MASK, baseline="moving_average"))
    assert first.state == pytest.approx(0.75)  # the first batch's mean starts the average
    second = estimate("reinforce", AdvantageInput(r2, (2, 2), MASK, baseline="moving_average", state=first.state))
    torch.testing.assert_close(second.advantages, (r2 - 0.75).unsqueeze(-1) * MASK)  # the baseline from *before*
    assert second.state == pytest.approx(0.9 * 0.75 + 0.1 * 0.25)
    normed = estimate("grpo", AdvantageInput(r1, (2, 2), MASK, reward_norm="running"))
    assert normed.reward_norm_state.count == 4 and normed.reward_norm_state.mean == pytest.approx(0.75)


def test_difficulty_and_hierarchical_variants_read_levels_and_pass_rates():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=D)
    inp = AdvantageInput(rewards, (2, 2), MASK, levels=torch.tensor([1.0, 2.0]), pass_rates=torch.tensor([0.9, 0.1]))
    weighted = estimate("grpo_difficulty", inp).advantages[:, 0]
    # same rewards, but the hard level (pass rate 0.1) weighs 1.4 and the easy one 0.6
    assert weighted[2] / weighted[0] == pytest.approx(1.4 / 0.6)
    hier = estimate("grpo_hierarchical", inp).advantages[:, 0]
    torch.testing.assert_close(hier.view(2, 2), adv.hierarchical_grpo_advantages(rewards.view(2, 2), torch.tensor([1, 2])))


def test_gae_subtracts_the_token_kl_and_whitens():
    torch.manual_seed(2)
    values, lp, ref = torch.rand(4, 3, dtype=D), -torch.rand(4, 3, dtype=D), -torch.rand(4, 3, dtype=D)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D)
    out = estimate("gae", AdvantageInput(rewards, (2, 2), MASK, logprobs=lp, ref_logprobs=ref, values=values,
                                         kl_coef=0.05, kl_estimator="k1", gamma=1.0, lam=0.9, whiten=False))
    token_rewards = torch.zeros(4, 3, dtype=D)
    for row, last in enumerate([1, 2, 0, 2]):
        token_rewards[row, last] = rewards[row]
    token_rewards = token_rewards - 0.05 * kl_estimate(lp, ref, "k1") * MASK
    a, returns = adv.gae_advantages(token_rewards, values, MASK, 1.0, 0.9)
    torch.testing.assert_close(out.advantages, a * MASK)
    torch.testing.assert_close(out.returns, returns)


def test_token_estimators_are_registered_and_unknown_names_refused():
    assert {"grpo", "dr_grpo", "grpo_difficulty", "grpo_hierarchical", "rloo", "reinforce", "reinforce_pp",
            "gae"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        estimate("nope", AdvantageInput(torch.zeros(2), (2,), torch.ones(2, 1)))
    with pytest.raises(ValueError, match="group sizes sum to 3"):
        AdvantageInput(torch.zeros(2), (3,), torch.ones(2, 1))


def test_a_user_estimator_registers_without_touching_the_recipe():
    @register_advantage("test_median_baseline")
    @sequence_estimator
    def median_baseline(rewards, inp, levels, pass_rates, state):
        return rewards - rewards.median(dim=-1, keepdim=True).values, state

    try:
        rewards = torch.tensor([3.0, 1.0, 2.0], dtype=D)
        out = estimate("test_median_baseline", AdvantageInput(rewards, (3,), torch.ones(3, 2, dtype=D)))
        torch.testing.assert_close(out.advantages[:, 0], torch.tensor([1.0, -1.0, 0.0], dtype=D))
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("test_median_baseline")(lambda inp: None)
    finally:
        ADVANTAGE_ESTIMATORS.pop("test_median_baseline")
