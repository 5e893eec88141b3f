"""Direction tests: one gradient step of each online-RL method on the toy 5-token policy raises the
probability of the rewarded completion (and, where it matters, keeps flat groups inert).

The toy (see algos_toy.py): completion k repeats token k for LENGTHS[k] tokens; reward 1 for k = 2.
"""

import pytest
import torch

import algos_toy as toy
from reasonloop.algos.advantages import (
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    hierarchical_grpo_advantages,
    reinforce_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    weight_positive,
    weighted_grpo_advantages,
)
from reasonloop.algos.aggregation import AGGREGATION_MODES
from reasonloop.algos.policy_loss import ppo_clip_loss, ppo_penalty_loss

SEQUENCE_ESTIMATORS = {
    "grpo": lambda r: grpo_advantages(r),
    "grpo_batch_std": lambda r: grpo_advantages(r, std_mode="batch"),
    "dr_grpo": dr_grpo_advantages,
    "weighted_grpo": lambda r: weighted_grpo_advantages(r, torch.linspace(0.5, 2.0, r.shape[1], dtype=r.dtype).expand_as(r)),
    "hierarchical_grpo": lambda r: hierarchical_grpo_advantages(r, torch.zeros(r.shape[0], dtype=torch.long)),
    "rloo": rloo_advantages,
    "reinforce_batch_mean": lambda r: reinforce_advantages(r)[0],
    "reinforce_moving_average": lambda r: reinforce_advantages(r, "moving_average", running_mean=0.1)[0],
}


def _step_with_advantages(adv, agg_mode="token_mean", loss="clip"):  # adv [N] or [N, T]
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    logp = toy.token_logprobs(theta, tokens)
    if loss == "clip":
        out, _ = ppo_clip_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.28, agg_mode=agg_mode)
    else:
        out, _ = ppo_penalty_loss(logp, logp.detach(), adv, mask, kl_coef=0.1, agg_mode=agg_mode)
    return toy.prob(theta), toy.prob(toy.sgd_step(theta, out))


@pytest.mark.parametrize("name", sorted(SEQUENCE_ESTIMATORS))
@pytest.mark.parametrize("agg_mode", AGGREGATION_MODES)
def test_sequence_estimators_with_ppo_clip_raise_rewarded_probability(name, agg_mode):
    adv = SEQUENCE_ESTIMATORS[name](toy.rewards()).reshape(-1)  # [B, G] -> [N]
    before, after = _step_with_advantages(adv, agg_mode)
    assert after > before


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_batch_mean"])
def test_ppo_penalty_raises_rewarded_probability(name):
    adv = SEQUENCE_ESTIMATORS[name](toy.rewards()).reshape(-1)
    before, after = _step_with_advantages(adv, "token_mean", loss="penalty")
    assert after > before


def test_reinforce_pp_raises_rewarded_probability():
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    ref = toy.token_logprobs(theta, tokens).detach()
    logp = toy.token_logprobs(theta, tokens)
    adv = reinforce_pp_advantages(toy.rewards(), logp.detach(), ref, mask, beta=0.05, gamma=1.0)  # [N, T]
    loss, _ = ppo_clip_loss(logp, logp.detach(), adv, mask)
    assert toy.prob(toy.sgd_step(theta, loss)) > toy.prob(theta)


def test_gae_with_ppo_raises_rewarded_probability():
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    token_rewards = torch.zeros_like(mask)
    last = mask.sum(-1).long() - 1
    token_rewards[torch.arange(5), last] = toy.rewards().reshape(-1)  # outcome reward on the last token
    values = torch.full_like(mask, 0.3)  # a crude critic
    adv, _ = gae_advantages(token_rewards, values, mask, gamma=1.0, lam=0.95)
    logp = toy.token_logprobs(theta, tokens)
    loss, _ = ppo_clip_loss(logp, logp.detach(), adv, mask)
    assert toy.prob(toy.sgd_step(theta, loss)) > toy.prob(theta)


def test_ppo_clip_several_epochs_keep_raising_then_clip_stops_the_update():
    """K epochs on one batch: the rewarded probability keeps rising while inside the clip; once the
    rewarded token's ratio leaves 1 + clip_high its gradient is zero."""
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    old = toy.token_logprobs(theta, tokens).detach()
    adv = grpo_advantages(toy.rewards()).reshape(-1)
    probs = [toy.prob(theta)]
    clip_high = []
    for _ in range(6):
        loss, m = ppo_clip_loss(toy.token_logprobs(theta, tokens), old, adv, mask, clip_low=0.2, clip_high=0.2)
        theta = toy.sgd_step(theta, loss, lr=0.3)
        probs.append(toy.prob(theta))
        clip_high.append(float(m["clip_frac_high"]))
    assert probs[1] > probs[0]
    assert all(b >= a - 1e-12 for a, b in zip(probs, probs[1:]))
    assert clip_high[0] == 0.0 and clip_high[-1] > 0.0  # the clip engaged at some point
    assert probs[-1] / probs[0] < 1.5  # and it bounded how far one batch can push the policy


def test_flat_group_gives_zero_gradient():
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    logp = toy.token_logprobs(theta, tokens)
    adv = grpo_advantages(torch.ones(1, 5, dtype=torch.float64)).reshape(-1)
    loss, _ = ppo_clip_loss(logp, logp.detach(), adv, mask)
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_down_weighted_rewards_still_raise_the_rewarded_probability(weight):
    """W-REINFORCE (0.1) and NSR (0): the penalty on the failures alone moves mass onto the rewarded sample."""
    adv = weight_positive(grpo_advantages(toy.rewards()), weight).reshape(-1)
    before, after = _step_with_advantages(adv)
    assert after > before


def _one_step(sampled: list[int], adv: list[float]) -> tuple[torch.Tensor, torch.Tensor]:  # probs before, after
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    keep = torch.tensor(sampled)
    logp = toy.token_logprobs(theta, tokens[keep])
    out, _ = ppo_clip_loss(logp, logp.detach(), torch.tensor(adv, dtype=torch.float64), mask[keep],
                           clip_low=0.2, clip_high=0.2, agg_mode="token_mean")
    return torch.softmax(theta.detach(), -1), torch.softmax(toy.sgd_step(theta, out).detach(), -1)


def test_a_penalty_raises_every_unsampled_answer_and_a_reward_lowers_them():
    """Why NSR keeps pass@k: penalising the wrong samples (completions 0 and 3) frees mass that every completion
    not sampled gains (1, 2 and 4 all rise), while rewarding the right one (2) takes mass from all the others;
    with positive_weight=0 only the first kind of step happens."""
    before, after = _one_step([0, 3], weight_positive(torch.tensor([-1.0, -1.0]), 0.0).tolist())
    assert (after[[1, 2, 4]] > before[[1, 2, 4]]).all()
    before, after = _one_step([2], [1.0])
    assert after[2] > before[2] and (after[[0, 1, 3, 4]] < before[[0, 1, 3, 4]]).all()
