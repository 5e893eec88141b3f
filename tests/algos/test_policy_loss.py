import math

import pytest
import torch
from torch.testing import assert_close

from reasonloop.algos.aggregation import AGGREGATION_MODES, step_normalizer
from reasonloop.algos.policy_loss import PPOPenaltyController, ppo_clip_loss, ppo_penalty_loss, tis_weights

D = torch.float64

# Hand table, clip_low 0.2, clip_high 0.28 (clip-higher), dual clip c = 3. loss = -min(rA, clip(r)A),
# then min(loss, -cA) where A < 0. grad w.r.t. log pi is -A r where the unclipped term is used, else 0.
#   ratio   A    loss    grad/9   note
TABLE = [
    (1.00, 1.0, -1.00, -1.00),  # on-policy
    (1.10, 1.0, -1.10, -1.10),  # inside
    (1.27, 1.0, -1.27, -1.27),  # just inside 1 + clip_high
    (1.29, 1.0, -1.28, 0.0),  # just outside: clipped, no gradient
    (0.81, -1.0, 0.81, 0.81),  # just inside 1 - clip_low
    (0.79, -1.0, 0.80, 0.0),  # just outside: clipped, no gradient
    (0.79, 1.0, -0.79, -0.79),  # outside the low clip but A > 0: not clipped (pessimistic min)
    (1.50, -1.0, 1.50, 1.50),  # ratio up, A < 0: not clipped, below the dual clip
    (4.00, -1.0, 3.00, 0.0),  # dual clip active: min(4, 3) = 3
]


def _table():
    ratio = torch.tensor([[r for r, *_ in TABLE]], dtype=D)
    adv = torch.tensor([[a for _, a, *_ in TABLE]], dtype=D)
    logp = ratio.log().requires_grad_(True)
    return logp, torch.zeros_like(logp), adv, torch.ones_like(ratio)


def test_ppo_clip_hand_table_with_clip_boundaries_and_dual_clip():
    logp, old, adv, mask = _table()
    loss, m = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    expected = sum(x[2] for x in TABLE) / 9
    assert_close(loss, torch.tensor(expected, dtype=D))
    (grad,) = torch.autograd.grad(loss, logp)
    assert_close(grad, torch.tensor([[x[3] / 9 for x in TABLE]], dtype=D))
    assert_close(m["clip_frac_high"], torch.tensor(1 / 9, dtype=D))  # ratio 1.29
    assert_close(m["clip_frac_low"], torch.tensor(1 / 9, dtype=D))  # ratio 0.79 with A < 0 (not the A > 0 row)
    assert_close(m["dual_clip_frac"], torch.tensor(1 / 9, dtype=D))
    assert_close(m["ratio_mean"], torch.tensor(sum(x[0] for x in TABLE) / 9, dtype=D))
    k3 = sum(r - 1 - math.log(r) for r, *_ in TABLE) / 9
    assert_close(m["approx_kl"], torch.tensor(k3, dtype=D))


def test_ppo_clip_without_dual_clip_is_unbounded_for_negative_advantages():
    logp, old, adv, mask = _table()
    loss, m = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    expected = (sum(x[2] for x in TABLE) - 3.0 + 4.0) / 9  # the last row is 4, not 3
    assert_close(loss, torch.tensor(expected, dtype=D))
    assert float(m["dual_clip_frac"]) == 0.0


def test_ppo_clip_sequence_level_ratio_hand_values():
    # GSPO: row 0 log-ratios [0.1, 0.3] -> mean 0.2 -> s = e^0.2 = 1.2214 (inside 1.28): loss -1.2214 per token
    #       row 1 log-ratios [0.3, 0.5, pad 9] -> mean 0.4 -> s = e^0.4 = 1.4918 > 1.28: clipped, -1.28, no grad
    logp = torch.tensor([[0.1, 0.3, 0.0], [0.3, 0.5, 9.0]], dtype=D, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=D)
    adv = torch.tensor([1.0, 1.0], dtype=D)
    loss, _ = ppo_clip_loss(logp, torch.zeros_like(logp), adv, mask, clip_low=0.2, clip_high=0.28, ratio_level="sequence", agg_mode="seq_mean_token_mean")
    s = math.exp(0.2)
    assert_close(loss, torch.tensor((-s - 1.28) / 2, dtype=D))
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp_t of -exp(mean) / 2 sequences = -s * (1/2 tokens) / 2
    assert_close(grad, torch.tensor([[-s / 4, -s / 4, 0.0], [0.0, 0.0, 0.0]], dtype=D))


def _ragged_batch(seed=0, N=7, T=5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(-1)).to(D)
    old = -torch.rand(N, T, generator=g, dtype=D) * 3
    logp = (old + 0.4 * torch.randn(N, T, generator=g, dtype=D)).requires_grad_(True)
    adv = torch.randn(N, generator=g, dtype=D)
    return logp, old, adv, mask


def test_ppo_clip_matches_loop():
    logp, old, adv, mask = _ragged_batch()
    loss, _ = ppo_clip_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.3, dual_clip=2.0, agg_mode="token_mean")
    total, count = 0.0, 0
    for i in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if mask[i, t]:
                r, a = math.exp(logp[i, t].item() - old[i, t].item()), adv[i].item()
                tok = max(-r * a, -min(max(r, 0.8), 1.3) * a)
                if a < 0:
                    tok = min(tok, -2.0 * a)
                total, count = total + tok, count + 1
    assert loss.item() == pytest.approx(total / count)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_ppo_clip_micro_batched_equals_whole(mode, ratio_level):
    logp, old, adv, mask = _ragged_batch(1)
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, ratio_level=ratio_level, agg_mode=mode, max_len=5)
    whole, _ = ppo_clip_loss(logp, old, adv, mask, **kw)
    (g_whole,) = torch.autograd.grad(whole, logp)
    norm = step_normalizer(mask, mode, max_len=5)
    total, grad, start = 0.0, torch.zeros_like(logp), 0
    for size in [3, 1, 3]:
        sl = slice(start, start + size)
        w = int(mask[sl].sum(-1).max())  # each micro-batch padded only to its own width
        part, _ = ppo_clip_loss(logp[sl, :w], old[sl, :w], adv[sl], mask[sl, :w], normalizer=norm, **kw)
        grad += torch.autograd.grad(part, logp)[0]
        total += part.item()
        start += size
    assert total == pytest.approx(whole.item())
    assert_close(grad, g_whole)


def test_weights_multiply_token_losses_and_tis_weights_hand_values():
    # trainer - sampler log-ratio: [log .5, log 1.5, log 3, (masked) log 9], cap 2 -> [0.5, 1.5, 2, 0]
    trainer = torch.log(torch.tensor([[0.5, 1.5, 3.0, 9.0]], dtype=D))
    w = tis_weights(trainer, torch.zeros_like(trainer), torch.tensor([[1, 1, 1, 0]], dtype=D), cap=2.0)
    assert_close(w, torch.tensor([[0.5, 1.5, 2.0, 0.0]], dtype=D))
    logp, old, adv, mask = _ragged_batch(2)
    weights = torch.rand(mask.shape, dtype=D)
    loss_w, _ = ppo_clip_loss(logp, old, adv, mask, weights=weights)
    loss_1, _ = ppo_clip_loss(logp, old, adv, mask, weights=torch.ones_like(weights))
    loss_0, _ = ppo_clip_loss(logp, old, adv, mask)
    assert_close(loss_1, loss_0)
    assert not torch.allclose(loss_w, loss_0)


def test_ppo_penalty_hand_values():
    # ratio 1.1, A 2, beta 0.5: -2.2 + 0.5 * (0.1 - log 1.1) ; ratio 1, A -1: 1 + 0
    logp = torch.log(torch.tensor([[1.1, 1.0]], dtype=D)).requires_grad_(True)
    loss, m = ppo_penalty_loss(logp, torch.zeros_like(logp), torch.tensor([[2.0, -1.0]], dtype=D), torch.ones(1, 2, dtype=D), kl_coef=0.5)
    k3 = 0.1 - math.log(1.1)
    assert_close(loss, torch.tensor(((-2.2 + 0.5 * k3) + 1.0) / 2, dtype=D))
    assert_close(m["kl"], torch.tensor(k3 / 2, dtype=D))
    assert_close(m["pg_loss"], torch.tensor((-2.2 + 1.0) / 2, dtype=D))
    # grad: d/dlogp [-rA + beta (r - 1 - log r)] = -rA + beta (r - 1)
    (grad,) = torch.autograd.grad(loss, logp)
    assert_close(grad, torch.tensor([[(-2.2 + 0.5 * 0.1) / 2, 1.0 / 2]], dtype=D))


def test_ppo_penalty_matches_loop():
    logp, old, adv, mask = _ragged_batch(3)
    loss, _ = ppo_penalty_loss(logp, old, adv, mask, kl_coef=0.3, agg_mode="seq_mean_token_mean")
    per_seq = []
    for i in range(mask.shape[0]):
        toks = []
        for t in range(mask.shape[1]):
            if mask[i, t]:
                r = math.exp(logp[i, t].item() - old[i, t].item())
                toks.append(-r * adv[i].item() + 0.3 * (r - 1 - math.log(r)))
        per_seq.append(sum(toks) / len(toks))
    assert loss.item() == pytest.approx(sum(per_seq) / len(per_seq))


def test_ppo_penalty_controller():
    c = PPOPenaltyController(value=1.0, target=0.01)
    assert c.update(0.001).value == 0.5  # d < target / 1.5
    assert c.update(0.02).value == 2.0  # d > target * 1.5
    assert c.update(0.012) is c  # within the band
    assert PPOPenaltyController.from_state_dict(c.update(0.02).state_dict()).value == 2.0


def test_shape_checks():
    logp, old, adv, mask = _ragged_batch()
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, old[:, :2], adv, mask)
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, old, adv[:3], mask)
    with pytest.raises(ValueError):
        ppo_clip_loss(logp, old, adv, mask, dual_clip=0.5)
