import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from algos_toy import initial_logits
from reasonloop.algos import PREFERENCE_LOSSES
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

D = torch.float64
# Two pairs. Pair 0: policy log-ratios chosen +0.5, rejected -0.5 -> h = 1; pair 1 swapped -> h = -1.
PC = torch.tensor([-1.0, -2.0], dtype=D)
PR = torch.tensor([-2.0, -1.0], dtype=D)
RC = torch.tensor([-1.5, -1.5], dtype=D)
RR = torch.tensor([-1.5, -1.5], dtype=D)
SP = math.log1p(math.exp(-0.5))  # -log sigmoid(0.5) = 0.4740770
SN = math.log1p(math.exp(0.5))  # -log sigmoid(-0.5) = 0.9740770


def test_dpo_hand_values_and_metrics():
    # beta 0.5: chosen rewards [0.25, -0.25], rejected [-0.25, 0.25], z = [0.5, -0.5]
    loss, m = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert_close(loss, torch.tensor((SP + SN) / 2, dtype=D))
    assert_close(m["chosen_reward"], torch.tensor(0.0, dtype=D))
    assert_close(m["reward_margin"], torch.tensor(0.0, dtype=D))
    assert_close(m["reward_accuracy"], torch.tensor(0.5, dtype=D))
    loss0, m0 = dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.5)
    assert_close(loss0, torch.tensor(SP, dtype=D))
    assert_close(m0["chosen_reward"], torch.tensor(0.25, dtype=D))
    assert_close(m0["rejected_reward"], torch.tensor(-0.25, dtype=D))
    assert_close(m0["reward_margin"], torch.tensor(0.5, dtype=D))


def test_cdpo_and_robust_dpo_hand_values():
    # eps 0.1, pair 0 only (z = 0.5):
    #   cDPO   = 0.9 * 0.4740770 + 0.1 * 0.9740770 = 0.5240770
    #   robust = (0.9 * 0.4740770 - 0.1 * 0.9740770) / 0.8 = 0.4115770
    args = (PC[:1], PR[:1], RC[:1], RR[:1])
    assert_close(cdpo_loss(*args, beta=0.5, label_smoothing=0.1)[0], torch.tensor(0.9 * SP + 0.1 * SN, dtype=D))
    assert_close(robust_dpo_loss(*args, beta=0.5, label_smoothing=0.1)[0], torch.tensor((0.9 * SP - 0.1 * SN) / 0.8, dtype=D))
    with pytest.raises(ValueError):
        cdpo_loss(*args, label_smoothing=0.5)


def test_ipo_hand_values():
    # beta 0.5: target margin 1/(2 beta) = 1; pair 0 h = 1 -> 0; pair 1 h = -1 -> (-1 - 1)^2 = 4
    loss, _ = ipo_loss(PC, PR, RC, RR, beta=0.5)
    assert_close(loss, torch.tensor(2.0, dtype=D))


def test_kto_hand_values():
    # beta 1, z0 = 0.2: desirable r = 0.5 -> 1 - sigmoid(0.3) = 0.4255575
    #                   undesirable r = -0.5 -> 1 - sigmoid(0.2 + 0.5) = 0.3318122 ; mean over 2
    loss, m = kto_loss(PC[:1], PR[:1], RC[:1], RR[:1], kl_ref=0.2, beta=1.0)
    expected = ((1 - 1 / (1 + math.exp(-0.3))) + (1 - 1 / (1 + math.exp(-0.7)))) / 2
    assert_close(loss, torch.tensor(expected, dtype=D))
    assert_close(m["chosen_reward"], torch.tensor(0.5, dtype=D))
    # a negative KL estimate is clamped to 0; weights scale each side
    neg, _ = kto_loss(PC[:1], PR[:1], RC[:1], RR[:1], kl_ref=-3.0, beta=1.0, undesirable_weight=2.0)
    expected = ((1 - 1 / (1 + math.exp(-0.5))) + 2 * (1 - 1 / (1 + math.exp(-0.5)))) / 2
    assert_close(neg, torch.tensor(expected, dtype=D))
    # unpaired: different numbers of desirable and undesirable examples
    loss3, _ = kto_loss(PC, PR[:1], RC, RR[:1], kl_ref=0.0, beta=1.0)
    assert loss3.shape == ()


def test_orpo_hand_values():
    # avg log-probs: chosen log 0.5 (odds 1, log-odds 0), rejected log 0.25 (odds 1/3)
    # L_OR = -log sigmoid(log 3) = log(4/3); NLL = log 2; lam 0.1
    loss, m = orpo_loss(torch.tensor([math.log(0.5)], dtype=D), torch.tensor([math.log(0.25)], dtype=D), lam=0.1)
    assert_close(loss, torch.tensor(math.log(2) + 0.1 * math.log(4 / 3), dtype=D))
    assert_close(m["log_odds_ratio"], torch.tensor(math.log(3), dtype=D))


def test_simpo_hand_values():
    # beta 2, gamma 0.5: r_w = 2 * -4/4 = -2, r_l = 2 * -9/3 = -6, z = 4 - 0.5 = 3.5
    loss, m = simpo_loss(torch.tensor([-4.0], dtype=D), torch.tensor([-9.0], dtype=D), torch.tensor([4]), torch.tensor([3]), beta=2.0, gamma=0.5)
    assert_close(loss, torch.tensor(math.log1p(math.exp(-3.5)), dtype=D))
    assert_close(m["reward_margin"], torch.tensor(4.0, dtype=D))


# --------------------------------------------------------------------------- known limits


def test_dpo_at_zero_margin_is_log2_and_gradient_vanishes_with_beta():
    for beta in (1.0, 0.1, 0.01, 0.001):
        pc = torch.tensor([-3.0], dtype=D, requires_grad=True)
        loss, _ = dpo_loss(pc, torch.tensor([-5.0], dtype=D), torch.tensor([-3.0], dtype=D), torch.tensor([-5.0], dtype=D), beta=beta)
        assert_close(loss, torch.tensor(math.log(2), dtype=D))
        (g,) = torch.autograd.grad(loss, pc)
        assert_close(g, torch.tensor([-beta / 2], dtype=D))  # dL/dz = -1/2 at z = 0, times beta
    # large positive margin -> loss -> 0
    big, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([-100.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=1.0)
    assert big.item() < 1e-30


def test_ipo_minimum_is_at_margin_one_over_two_beta():
    beta = 0.25
    target = 1 / (2 * beta)
    margins = torch.linspace(-4, 6, 1001, dtype=D)
    losses = torch.stack([ipo_loss(m.view(1), torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), beta=beta)[0] for m in margins])
    assert margins[losses.argmin()].item() == pytest.approx(target, abs=0.011)
    h = torch.tensor([target], dtype=D, requires_grad=True)
    loss, _ = ipo_loss(h, torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), beta=beta)
    assert loss.item() == 0.0 and torch.autograd.grad(loss, h)[0].item() == 0.0


@pytest.mark.parametrize("fn", [cdpo_loss, robust_dpo_loss])
def test_label_smoothing_zero_equals_dpo(fn):
    pc = PC.clone().requires_grad_(True)
    a, _ = fn(pc, PR, RC, RR, beta=0.3, label_smoothing=0.0)
    b, _ = dpo_loss(pc, PR, RC, RR, beta=0.3)
    assert_close(a, b)
    assert_close(torch.autograd.grad(a, pc)[0], torch.autograd.grad(b, pc)[0])


def test_spin_is_dpo_with_real_as_chosen():
    assert_close(spin_loss(PC, PR, RC, RR, beta=0.2)[0], dpo_loss(PC, PR, RC, RR, beta=0.2)[0])


def test_cdpo_has_finite_optimum():
    # minimum of -(1-e) log s(z) - e log s(-z) at z = log((1-e)/e)
    z = torch.linspace(-1, 5, 6001, dtype=D)
    loss = -(0.9) * F.logsigmoid(z) - 0.1 * F.logsigmoid(-z)
    assert z[loss.argmin()].item() == pytest.approx(math.log(9), abs=2e-3)
    # the implementation agrees at that point
    lz = cdpo_loss(torch.tensor([math.log(9)], dtype=D), torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), beta=1.0, label_smoothing=0.1)[0]
    assert_close(lz, loss.min(), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- equivalence


def _rand_pairs(seed=0, B=6):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(B, generator=g, dtype=D) * 5 + 0.1) for _ in range(4)]


def test_vectorised_matches_loop():
    pc, pr, rc, rr = _rand_pairs()
    ls = lambda x: math.log1p(math.exp(-x))  # noqa: E731  (= -log sigmoid(x))
    beta, eps = 0.3, 0.2
    zs = [beta * ((a - c) - (b - d)) for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    hs = [z / beta for z in zs]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert dpo_loss(pc, pr, rc, rr, beta)[0].item() == pytest.approx(mean([ls(z) for z in zs]))
    assert cdpo_loss(pc, pr, rc, rr, beta, eps)[0].item() == pytest.approx(mean([(1 - eps) * ls(z) + eps * ls(-z) for z in zs]))
    assert robust_dpo_loss(pc, pr, rc, rr, beta, eps)[0].item() == pytest.approx(mean([((1 - eps) * ls(z) - eps * ls(-z)) / (1 - 2 * eps) for z in zs]))
    assert ipo_loss(pc, pr, rc, rr, beta)[0].item() == pytest.approx(mean([(h - 1 / (2 * beta)) ** 2 for h in hs]))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    kto = [1 - sig(beta * ((a - c) - 0.1)) for a, c in zip(pc.tolist(), rc.tolist())] + [1 - sig(beta * (0.1 - (b - d))) for b, d in zip(pr.tolist(), rr.tolist())]
    assert kto_loss(pc, pr, rc, rr, 0.1, beta)[0].item() == pytest.approx(mean(kto))
    lo = lambda x: x - math.log(1 - math.exp(x))  # noqa: E731
    orpo = [-a + 0.1 * ls(lo(a) - lo(b)) for a, b in zip(pc.tolist(), pr.tolist())]
    assert orpo_loss(pc, pr, lam=0.1)[0].item() == pytest.approx(mean(orpo))
    lc, lr = torch.arange(1, 7), torch.arange(6, 0, -1)
    simpo = [ls(2.0 * a / n - 2.0 * b / k - 0.5) for a, b, n, k in zip(pc.tolist(), pr.tolist(), lc.tolist(), lr.tolist())]
    assert simpo_loss(pc, pr, lc, lr, 2.0, 0.5)[0].item() == pytest.approx(mean(simpo))


@pytest.mark.parametrize("name", sorted(set(PREFERENCE_LOSSES) - {"kto", "orpo", "simpo"}))
def test_micro_batched_with_step_normalizer_equals_whole(name):
    fn = PREFERENCE_LOSSES[name]
    pc, pr, rc, rr = _rand_pairs(1, B=7)
    pc.requires_grad_(True)
    whole, _ = fn(pc, pr, rc, rr, beta=0.4)
    parts = [fn(pc[s], pr[s], rc[s], rr[s], beta=0.4, normalizer=7)[0] for s in (slice(0, 5), slice(5, 6), slice(6, 7))]
    assert_close(sum(p.detach() for p in parts), whole.detach())
    assert_close(sum(torch.autograd.grad(p, pc)[0] for p in parts), torch.autograd.grad(whole, pc)[0])


# --------------------------------------------------------------------------- direction


CHOSEN, REJECTED = 2, 3  # on the toy 5-token policy; the rejected one starts more likely


def _direction_step(loss_of_logps):
    theta = initial_logits()
    ref = torch.log_softmax(theta.detach(), -1)
    lp = torch.log_softmax(theta, -1)
    loss = loss_of_logps(lp, ref)
    (grad,) = torch.autograd.grad(loss, theta)
    new = torch.log_softmax(theta.detach() - 0.5 * grad, -1)
    lp = lp.detach()
    return float(lp[CHOSEN] - lp[REJECTED]), float(new[CHOSEN] - new[REJECTED])


def _paired(fn, **kw):
    def f(lp, ref):
        v = lambda x: x.view(1)  # noqa: E731
        return fn(v(lp[CHOSEN]), v(lp[REJECTED]), v(ref[CHOSEN]), v(ref[REJECTED]), **kw)[0]

    return f


@pytest.mark.parametrize(
    "name, loss_fn",
    [
        ("dpo", _paired(dpo_loss, beta=0.5)),
        ("cdpo", _paired(cdpo_loss, beta=0.5, label_smoothing=0.1)),
        ("robust_dpo", _paired(robust_dpo_loss, beta=0.5, label_smoothing=0.1)),
        ("ipo", _paired(ipo_loss, beta=0.5)),
        ("spin", _paired(spin_loss, beta=0.5)),
        ("kto", _paired(kto_loss, kl_ref=0.0, beta=0.5)),
        ("orpo", lambda lp, ref: orpo_loss(lp[CHOSEN].view(1), lp[REJECTED].view(1), lam=0.5)[0]),
        ("simpo", lambda lp, ref: simpo_loss(lp[CHOSEN].view(1), lp[REJECTED].view(1), torch.tensor([1]), torch.tensor([1]), beta=2.0, gamma=0.5)[0]),
    ],
)
def test_direction_one_step_raises_chosen_over_rejected(name, loss_fn):
    before, after = _direction_step(loss_fn)
    assert after > before, name
