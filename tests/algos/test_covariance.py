"""Clip-Cov and KL-Cov (algos/covariance.py): hand values, a loop equivalence, and direction on the toy policy."""

import pytest
import torch

import algos_toy as toy
from reasonloop.algos.advantages import grpo_advantages
from reasonloop.algos.aggregation import aggregate
from reasonloop.algos.covariance import (
    clip_cov_weights,
    kl_cov_penalty,
    kl_cov_select,
    selection_size,
    token_covariance,
)
from reasonloop.algos.policy_loss import ppo_clip_loss

LOGP = torch.tensor([[-0.1, -2.0, -0.5], [-1.0, -0.2, 0.0]], dtype=torch.float64)
ADV = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)


def test_token_covariance_by_hand():
    # valid log-probs -0.1 -2.0 -0.5 -1.0 -0.2: mean -0.76; advantages 1 1 1 -1 -1: mean 0.2
    cov = token_covariance(LOGP, ADV, MASK)
    expected = torch.tensor([[0.66 * 0.8, -1.24 * 0.8, 0.26 * 0.8], [-0.24 * -1.2, 0.56 * -1.2, 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(cov, expected)


def test_token_covariance_equals_a_loop_over_valid_tokens():
    g = torch.Generator().manual_seed(0)
    logp, adv = -torch.rand(6, 9, generator=g, dtype=torch.float64) * 3, torch.randn(6, 9, generator=g, dtype=torch.float64)
    mask = (torch.rand(6, 9, generator=g) > 0.3).double()
    cells = [(i, j) for i in range(6) for j in range(9) if mask[i, j]]
    mean_lp = sum(float(logp[c]) for c in cells) / len(cells)
    mean_a = sum(float(adv[c]) for c in cells) / len(cells)
    cov = token_covariance(logp, adv, mask)
    for i in range(6):
        for j in range(9):
            want = (float(logp[i, j]) - mean_lp) * (float(adv[i, j]) - mean_a) if mask[i, j] else 0.0
            assert float(cov[i, j]) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("ratio, n, k", [(2e-4, 5, 1), (0.4, 5, 2), (1.0, 5, 5), (0.5, 0, 0)])
def test_selection_size_is_the_floor_of_the_ratio_and_at_least_one(ratio, n, k):
    mask = torch.zeros(2, 5)
    mask.view(-1)[:n] = 1
    assert selection_size(mask, ratio) == k


def test_clip_cov_drops_k_tokens_drawn_inside_the_window_only():
    cov = token_covariance(LOGP, ADV, MASK)  # inside (0.25, 1): 0.528 (0, 0) and 0.288 (1, 0)
    counts = torch.zeros_like(cov)
    for seed in range(40):
        w = clip_cov_weights(cov, MASK, ratio=0.2, low=0.25, high=1.0, generator=torch.Generator().manual_seed(seed))
        assert int((w == 0).sum()) == 1  # k = max(floor(0.2 * 5), 1)
        counts += (w == 0).double()
    assert counts[0, 0] > 0 and counts[1, 0] > 0  # both candidates get drawn
    assert counts.sum() == counts[0, 0] + counts[1, 0]  # and nothing outside the window
    w = clip_cov_weights(cov, MASK, ratio=1.0, low=0.25, high=1.0)
    assert torch.equal(w == 0, torch.tensor([[True, False, False], [True, False, False]]))  # fewer than k: all
    assert torch.equal(clip_cov_weights(cov, MASK, ratio=1.0, low=2.0, high=3.0), torch.ones_like(cov))  # none


def test_clip_cov_draw_is_fixed_by_its_generator():
    cov = token_covariance(LOGP, ADV, MASK)
    draw = lambda: clip_cov_weights(cov, MASK, ratio=0.2, low=0.2, high=1.0,  # noqa: E731
                                    generator=torch.Generator().manual_seed(7))
    assert torch.equal(draw(), draw())


def test_kl_cov_selects_the_top_k_valid_tokens():
    cov = token_covariance(LOGP, ADV, MASK)  # 0.528, -0.992, 0.208 / 0.288, -0.672, (masked)
    assert torch.equal(kl_cov_select(cov, MASK, ratio=0.4), torch.tensor([[True, False, False], [True, False, False]]))
    assert torch.equal(kl_cov_select(cov, MASK, ratio=1.0), MASK.bool())  # never a masked token
    assert torch.equal(kl_cov_select(cov, MASK, ratio=0.1), torch.tensor([[True, False, False], [False, False, False]]))


def test_kl_cov_penalty_by_hand_and_zero_gradient_on_policy():
    old = LOGP.clone()
    logp = (LOGP + torch.tensor([[0.3, -0.1, 0.0], [0.2, 0.0, 0.0]], dtype=torch.float64)).requires_grad_(True)
    selected = torch.tensor([[True, True, False], [False, False, False]])
    pen = kl_cov_penalty(logp, old, selected, coef=2.0)
    torch.testing.assert_close(pen.detach(), torch.tensor([[0.6, 0.2, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    on_policy = LOGP.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_cov_penalty(on_policy, on_policy.detach(), selected, 2.0).sum(), on_policy)
    assert torch.equal(grad, torch.zeros_like(grad))  # why kl_cov needs epochs >= 2


@pytest.mark.parametrize("bad", [dict(ratio=0.0), dict(ratio=1.5), dict(low=1.0, high=1.0)])
def test_bad_arguments_raise(bad):
    cov = token_covariance(LOGP, ADV, MASK)
    args = dict(ratio=0.5, low=0.0, high=1.0) | bad
    with pytest.raises(ValueError):
        clip_cov_weights(cov, MASK, **args)


def _entropy(theta: torch.Tensor) -> float:
    p = torch.softmax(theta.detach(), -1)
    return float(-(p * p.log()).sum())


def test_clip_cov_keeps_more_entropy_and_still_raises_the_rewarded_answer():
    """One step on the toy: dropping the positive-covariance tokens (the ones whose gradient sharpens the policy)
    leaves the entropy higher than plain GRPO's step does, and the rewarded completion still gains."""
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    adv = grpo_advantages(toy.rewards()).reshape(-1, 1).expand_as(mask)
    cov = token_covariance(toy.token_logprobs(theta, tokens), adv, mask)
    assert (cov > 0).any() and (cov < 0).any()
    weights = clip_cov_weights(cov, mask, ratio=1.0, low=0.0, high=1e9)  # every positive-covariance token
    after = {}
    for name, w in (("grpo", None), ("clip_cov", weights)):
        logp = toy.token_logprobs(theta, tokens)
        loss, _ = ppo_clip_loss(logp, logp.detach(), adv, mask, agg_mode="token_mean", weights=w)
        after[name] = toy.sgd_step(theta, loss)
    assert _entropy(after["clip_cov"]) > _entropy(after["grpo"])
    assert toy.prob(after["clip_cov"]) > toy.prob(theta)


def test_kl_cov_holds_its_tokens_near_the_old_policy_at_the_second_epoch():
    theta = toy.initial_logits()
    tokens, mask = toy.completions()
    old = toy.token_logprobs(theta, tokens).detach()
    adv = grpo_advantages(toy.rewards()).reshape(-1, 1).expand_as(mask)
    selected = kl_cov_select(token_covariance(old, adv, mask), mask, ratio=0.2)
    drift = {}
    for coef in (0.0, 1.0):  # the paper's beta; much larger overshoots (|x| has a gradient of constant size)
        th = theta
        for _ in range(2):  # two epochs on the batch
            logp = toy.token_logprobs(th, tokens)
            loss, _ = ppo_clip_loss(logp, old, adv, mask, agg_mode="token_mean")
            loss = loss + aggregate(kl_cov_penalty(logp, old, selected, coef), mask, "token_mean")
            th = toy.sgd_step(th, loss, lr=0.3)
        drift[coef] = float((toy.token_logprobs(th, tokens).detach() - old)[selected].abs().sum())
    assert drift[1.0] < 0.2 * drift[0.0]
