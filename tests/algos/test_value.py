import pytest
import torch
from torch.testing import assert_close

from reasonloop.algos.aggregation import AGGREGATION_MODES, step_normalizer
from reasonloop.algos.value import clipped_value_loss, explained_variance

D = torch.float64

# Hand table, clip 0.2, loss = 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, +-0.2)
#   V     V_old  R     unclipped  V_clip  clipped  token loss  clip active
#   1.0   0.5    2.0   1.0        0.7     1.69     0.845       yes (V moved 0.5 > 0.2; clipped term larger)
#   1.0   0.95   0.0   1.0        1.0     1.0      0.5         no (inside the clip)
#  -0.5   0.1    1.0   2.25       -0.1    1.21     1.125       no (clipped term is smaller)
V = torch.tensor([[1.0, 1.0, -0.5]], dtype=D)
V_OLD = torch.tensor([[0.5, 0.95, 0.1]], dtype=D)
RET = torch.tensor([[2.0, 0.0, 1.0]], dtype=D)
MASK = torch.ones(1, 3, dtype=D)


def test_clipped_value_loss_hand_values():
    v = V.clone().requires_grad_(True)
    loss, m = clipped_value_loss(v, V_OLD, RET, MASK, clip_range=0.2)
    assert_close(loss, torch.tensor((0.845 + 0.5 + 1.125) / 3, dtype=D))
    assert_close(m["value_clip_frac"], torch.tensor(1 / 3, dtype=D))
    # token 0 uses the clipped branch: V_clip does not depend on V there (clip saturated) -> grad 0
    (grad,) = torch.autograd.grad(loss, v)
    assert_close(grad, torch.tensor([[0.0, 1.0 / 3, -1.5 / 3]], dtype=D))
    # explained variance: Var(R) = 2/3; R - V = [1, -1, 1.5], Var = 3.5/3 -> 1 - 1.75 = -0.75
    assert_close(m["explained_variance"], torch.tensor(-0.75, dtype=D))
    loss_nc, m_nc = clipped_value_loss(v, V_OLD, RET, MASK, clip_range=None)
    assert_close(loss_nc, torch.tensor(0.5 * (1.0 + 1.0 + 2.25) / 3, dtype=D))
    assert float(m_nc["value_clip_frac"]) == 0.0


def test_explained_variance_limits():
    r = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=D)
    assert_close(explained_variance(r, r, mask), torch.tensor(1.0, dtype=D))
    assert_close(explained_variance(torch.full_like(r, 2.0), r, mask), torch.tensor(0.0, dtype=D))
    assert_close(explained_variance(r, torch.ones_like(r), mask), torch.tensor(0.0, dtype=D))  # Var(R)=0


def test_matches_loop():
    g = torch.Generator().manual_seed(0)
    v, vo, r = torch.randn(3, 4, 5, generator=g, dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=D)
    loss, _ = clipped_value_loss(v, vo, r, mask, clip_range=0.1, agg_mode="seq_mean_token_mean")
    per_seq = []
    for i in range(4):
        toks = []
        for t in range(5):
            if mask[i, t]:
                vc = vo[i, t].item() + max(-0.1, min(0.1, v[i, t].item() - vo[i, t].item()))
                toks.append(0.5 * max((v[i, t].item() - r[i, t].item()) ** 2, (vc - r[i, t].item()) ** 2))
        per_seq.append(sum(toks) / len(toks))
    assert loss.item() == pytest.approx(sum(per_seq) / 4)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_micro_batched_equals_whole(mode):
    g = torch.Generator().manual_seed(1)
    v, vo, r = torch.randn(3, 5, 4, generator=g, dtype=D)
    v.requires_grad_(True)
    mask = (torch.arange(4).unsqueeze(0) < torch.tensor([4, 1, 3, 2, 4]).unsqueeze(-1)).to(D)
    whole, _ = clipped_value_loss(v, vo, r, mask, clip_range=0.2, agg_mode=mode)
    (gw,) = torch.autograd.grad(whole, v)
    norm = step_normalizer(mask, mode)
    parts = [clipped_value_loss(v[s], vo[s], r[s], mask[s], clip_range=0.2, agg_mode=mode, normalizer=norm)[0] for s in (slice(0, 2), slice(2, 5))]
    assert_close(sum(p.detach() for p in parts), whole.detach())
    assert_close(sum(torch.autograd.grad(p, v)[0] for p in parts), gw)


def test_direction_value_step_lowers_value_error():
    g = torch.Generator().manual_seed(2)
    returns = torch.randn(4, 6, generator=g, dtype=D)
    mask = (torch.arange(6).unsqueeze(0) < torch.tensor([6, 2, 4, 5]).unsqueeze(-1)).to(D)
    values = torch.zeros(4, 6, dtype=D, requires_grad=True)
    old = values.detach().clone()
    mse = lambda x: float((((x - returns) ** 2) * mask).sum() / mask.sum())  # noqa: E731
    loss, _ = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    (grad,) = torch.autograd.grad(loss, values)
    assert mse(values.detach() - 1.0 * grad) < mse(values.detach())
