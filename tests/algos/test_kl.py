import math

import pytest
import torch
from torch.testing import assert_close

from reasonloop.algos.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty_in_reward,
)

# Hand table. d = logp - ref_logp, r = exp(-d).
#   d      k1     k2 = d^2/2   k3 = r - 1 + d
#   0.0    0.0    0.0          0.0
#   0.5    0.5    0.125        e^-0.5 - 0.5  = 0.1065306597
#  -0.5   -0.5    0.125        e^0.5 - 1.5   = 0.1487212707
#   2.0    2.0    2.0          e^-2 + 1      = 1.1353352832
D = torch.tensor([0.0, 0.5, -0.5, 2.0], dtype=torch.float64)
REF = torch.tensor([-1.0, -2.0, -0.7, -3.0], dtype=torch.float64)
LOGP = REF + D


def test_hand_values():
    assert_close(kl_k1(LOGP, REF), D)
    assert_close(kl_k2(LOGP, REF), torch.tensor([0.0, 0.125, 0.125, 2.0], dtype=torch.float64))
    assert_close(kl_k3(LOGP, REF), torch.tensor([0.0, 0.1065306597, 0.1487212707, 1.1353352832], dtype=torch.float64))
    assert_close(kl_estimate(LOGP, REF, "k3"), kl_k3(LOGP, REF))
    with pytest.raises(ValueError):
        kl_estimate(LOGP, REF, "k4")
    with pytest.raises(ValueError):
        kl_k1(LOGP, REF[:2])


def test_vectorised_matches_loop():
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    loop = {"k1": [], "k2": [], "k3": []}
    for a, b in zip(lp.flatten().tolist(), ref.flatten().tolist()):
        loop["k1"].append(a - b)
        loop["k2"].append(0.5 * (a - b) ** 2)
        loop["k3"].append(math.exp(b - a) - 1 - (b - a))
    for name, values in loop.items():
        assert_close(kl_estimate(lp, ref, name), torch.tensor(values, dtype=torch.float64).reshape(3, 4))


def test_k1_k3_unbiased_on_a_categorical():
    """Sampling from pi, the mean of k1 and k3 approach the exact KL(pi || pi_ref); k2, k3 >= 0."""
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = p.log()[x], q.log()[x]
    assert abs(float(kl_k1(lp, lq).mean()) - exact) < 0.01
    assert abs(float(kl_k3(lp, lq).mean()) - exact) < 0.01
    assert (kl_k3(lp, lq) >= 0).all() and (kl_k2(lp, lq) >= 0).all()


def test_kl_penalty_in_reward_hand_values():
    # beta = 0.5, k1: rewards [0, 0, 1 | 0.5, 0, pad], d = [0.2, -0.1, 0.4 | 0.3, 0.0, 9]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 7.0]])
    ref = torch.zeros(2, 3)
    logp = torch.tensor([[0.2, -0.1, 0.4], [0.3, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out, kl = kl_penalty_in_reward(rewards, logp.requires_grad_(), ref, mask, beta=0.5)
    assert_close(out, torch.tensor([[-0.1, 0.05, 0.8], [0.35, 0.0, 0.0]]))
    assert_close(kl, torch.tensor([[0.2, -0.1, 0.4], [0.3, 0.0, 0.0]]))
    assert not out.requires_grad  # a reward is a constant for the policy gradient


def test_adaptive_controller_hand_values_and_clip():
    c = AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    # error = (7.5 - 6) / 6 = 0.25 -> clipped to 0.2; beta = 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
    assert c.update(7.5, n_steps=256).value == pytest.approx(0.100512)
    # error = (5 - 6) / 6 = -1/6; beta = 0.1 * (1 - 256 / 60000)
    assert c.update(5.0, n_steps=256).value == pytest.approx(0.1 * (1 - 256 / 60000))
    # error clipped at -0.2 for KL far below target
    assert c.update(0.0, n_steps=10_000).value == pytest.approx(0.08)
    assert c.value == 0.1  # pure: the original is unchanged


def test_controllers_state_dict_round_trip():
    c = AdaptiveKLController(0.1, 6.0, 10_000).update(9.0, 100)
    assert AdaptiveKLController.from_state_dict(c.state_dict()) == c
    assert AdaptiveKLController(1.0, 1.0, 1.0).load_state_dict(c.state_dict()) == c
    f = FixedKLController(0.05)
    assert f.update(100.0, 10) == f and FixedKLController.from_state_dict(f.state_dict()) == f


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_direction_kl_loss_step_moves_policy_towards_reference(estimator):
    """One step on the exact-expectation KL loss lowers the true KL(pi || pi_ref)."""
    ref_logits = torch.tensor([1.0, 0.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    theta = torch.tensor([-0.5, 0.8, 0.2, 0.0, 0.3], dtype=torch.float64, requires_grad=True)

    def true_kl(th):
        th = th.detach()
        p = torch.softmax(th, -1)
        return float((p * (torch.log_softmax(th, -1) - torch.log_softmax(ref_logits, -1))).sum())

    # Samples weighted by pi (score-function form for k1, reparam-free expectation for k2/k3):
    lp = torch.log_softmax(theta, -1)
    p = lp.exp().detach()
    est = kl_estimate(lp, torch.log_softmax(ref_logits, -1), estimator)
    loss = (p * est).sum() + (p * est.detach() * lp).sum() * (estimator == "k1")
    (grad,) = torch.autograd.grad(loss, theta)
    assert true_kl(theta - 0.1 * grad) < true_kl(theta)
