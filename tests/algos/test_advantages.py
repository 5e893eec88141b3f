import math
import statistics

import pytest
import torch
from torch.testing import assert_close

from reasonloop.algos.advantages import (
    RewardNormState,
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
    rloo_advantages,
    update_reward_norm_state,
    weight_positive,
    weighted_grpo_advantages,
)

D = torch.float64
# Three prompts x four samples; the middle group is all-correct (no signal).
R = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]], dtype=D)


def _rand_rewards(seed=0, B=5, G=6):
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (B, G), generator=g).to(D) + torch.rand(B, G, generator=g, dtype=D) * (torch.arange(B) % 2 == 0).unsqueeze(-1)
    r[1] = 0.7  # one flat group
    return r


# --------------------------------------------------------------------------- GRPO


def test_grpo_hand_values():
    # group 0: mean 0.5, unbiased std sqrt(1/3) -> +-0.5 / 0.57735 = +-0.8660254
    # group 1: all equal -> exactly 0
    # group 2: mean 0.25, unbiased std 0.5 -> [-0.5, -0.5, -0.5, 1.5]
    a = 0.8660254
    expected = torch.tensor([[a, -a, -a, a], [0, 0, 0, 0], [-0.5, -0.5, -0.5, 1.5]], dtype=D)
    assert_close(grpo_advantages(R), expected, atol=1e-5, rtol=0)
    assert torch.equal(grpo_advantages(R)[1], torch.zeros(4, dtype=D))


def test_grpo_batch_std_and_dr_grpo_hand_values():
    # batch: 7 ones in 12, mean 7/12, unbiased var (7 - 12 (7/12)^2) / 11 = 35/132, std 0.5149287
    s = math.sqrt(35 / 132)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.25, -0.25, -0.25, 0.75]], dtype=D)
    assert_close(grpo_advantages(R, std_mode="batch"), expected / s, atol=1e-5, rtol=0)
    # Dr.GRPO: plain centring
    assert_close(dr_grpo_advantages(R), expected)
    assert_close(grpo_advantages(R, std_mode="none"), expected)


def test_grpo_flat_groups_never_nan():
    flat = torch.tensor([[0.1, 0.1, 0.1], [3.0, 3.0, 3.0]], dtype=torch.float32)
    for mode in ("group", "batch", "none"):
        out = grpo_advantages(flat, std_mode=mode)
        assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(grpo_advantages(torch.ones(4, 1)), torch.zeros(4, 1))  # G == 1


def test_grpo_matches_loop():
    r = _rand_rewards()
    out = grpo_advantages(r, eps=1e-6)
    for b, row in enumerate(r.tolist()):
        mu, sd = statistics.mean(row), statistics.stdev(row)
        for g, x in enumerate(row):
            want = 0.0 if len(set(row)) == 1 else (x - mu) / (sd + 1e-6)
            assert out[b, g].item() == pytest.approx(want, abs=1e-9)


def test_weighted_grpo_hand_values_and_uniform_equals_grpo():
    # rewards [1, 0, 0], weights [2, 1, 1]: mu = 2/4 = 0.5; var = (2*.25 + .25 + .25)/4 = .25 -> [1, -1, -1]
    out = weighted_grpo_advantages(torch.tensor([[1.0, 0.0, 0.0]], dtype=D), torch.tensor([[2.0, 1.0, 1.0]], dtype=D), eps=0.0)
    assert_close(out, torch.tensor([[1.0, -1.0, -1.0]], dtype=D))
    r = _rand_rewards(1)
    for mode in ("group", "batch", "none"):
        assert_close(weighted_grpo_advantages(r, torch.ones_like(r), std_mode=mode), grpo_advantages(r, std_mode=mode, unbiased=False))
    assert torch.equal(weighted_grpo_advantages(R, torch.rand(3, 4, dtype=D) + 0.1)[1], torch.zeros(4, dtype=D))


def test_weighted_grpo_matches_loop():
    r = _rand_rewards(2)
    w = torch.rand(r.shape, generator=torch.Generator().manual_seed(5), dtype=D) + 0.1
    out = weighted_grpo_advantages(r, w, eps=1e-6)
    for b in range(r.shape[0]):
        rs, ws = r[b].tolist(), w[b].tolist()
        mu = sum(x * y for x, y in zip(rs, ws)) / sum(ws)
        sd = math.sqrt(sum(y * (x - mu) ** 2 for x, y in zip(rs, ws)) / sum(ws))
        for g in range(len(rs)):
            want = 0.0 if len(set(rs)) == 1 else (rs[g] - mu) / (sd + 1e-6)
            assert out[b, g].item() == pytest.approx(want, abs=1e-9)


def test_hierarchical_grpo_hand_values():
    # stratum 0: groups [1, 0] and [0, 3]; centred [.5, -.5], [-1.5, 1.5]; var = (2*.25 + 2*2.25)/4 = 1.25
    # stratum 1: the flat group [2, 2] -> 0
    r = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]], dtype=D)
    s = math.sqrt(1.25)
    expected = torch.tensor([[0.5 / s, -0.5 / s], [-1.5 / s, 1.5 / s], [0.0, 0.0]], dtype=D)
    assert_close(hierarchical_grpo_advantages(r, torch.tensor([4, 4, 7]), eps=0.0), expected)


def test_hierarchical_grpo_matches_loop_and_singleton_strata():
    r = _rand_rewards(3, B=6)
    strata = torch.tensor([0, 1, 0, 2, 1, 0])
    out = hierarchical_grpo_advantages(r, strata, eps=1e-6)
    for b in range(6):
        same = [i for i in range(6) if strata[i] == strata[b]]
        centred = [[x - statistics.mean(r[i].tolist()) for x in r[i].tolist()] for i in same]
        sd = math.sqrt(sum(c * c for row in centred for c in row) / sum(len(row) for row in centred))
        for g in range(r.shape[1]):
            row = r[b].tolist()
            want = 0.0 if len(set(row)) == 1 else (row[g] - statistics.mean(row)) / (sd + 1e-6)
            assert out[b, g].item() == pytest.approx(want, abs=1e-9)
    # every prompt its own stratum == GRPO with the population std
    assert_close(hierarchical_grpo_advantages(r, torch.arange(6)), grpo_advantages(r, unbiased=False))


def test_adaptive_group_size():
    # G = round(4 + 12 (1 - p)): p = 1 -> 4, 0.5 -> 10, 0 -> 16, 0.25 -> 13; out-of-range clamps
    out = adaptive_group_size(torch.tensor([1.0, 0.5, 0.0, 0.25, 1.7, -0.3]), 4, 16)
    assert out.tolist() == [4, 10, 16, 13, 4, 16]
    sizes = adaptive_group_size(torch.linspace(1, 0, 50), 2, 32)  # increasing difficulty
    assert (sizes[1:] >= sizes[:-1]).all() and sizes[0] == 2 and sizes[-1] == 32
    with pytest.raises(ValueError):
        adaptive_group_size(torch.tensor([0.5]), 8, 4)


# --------------------------------------------------------------------------- RLOO / REINFORCE


def test_rloo_hand_values():
    # [1,0,0,1]: r=1 -> 1 - 1/3 = 2/3 ; r=0 -> 0 - 2/3 ; [0,0,0,1]: 0 - 1/3 ; 1 - 0 = 1
    expected = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0, 0, 0, 0], [-1 / 3, -1 / 3, -1 / 3, 1.0]], dtype=D)
    assert_close(rloo_advantages(R), expected)
    assert_close(rloo_advantages(torch.tensor([[3.0, 1.0]])), torch.tensor([[2.0, -2.0]]))
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(2, 1))


def test_rloo_matches_loop():
    r = _rand_rewards(4)
    out = rloo_advantages(r)
    for b, row in enumerate(r.tolist()):
        for g, x in enumerate(row):
            others = row[:g] + row[g + 1 :]
            want = 0.0 if len(set(row)) == 1 else x - sum(others) / len(others)
            assert out[b, g].item() == pytest.approx(want, abs=1e-9)


def test_reinforce_hand_values():
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=D)  # batch mean 0.25
    adv, running = reinforce_advantages(r)
    assert_close(adv, r - 0.25) and running is None
    # moving average: baseline = previous running value 0.5; new = 0.9 * 0.5 + 0.1 * 0.25 = 0.475
    adv, running = reinforce_advantages(r, "moving_average", running_mean=0.5, momentum=0.9)
    assert_close(adv, r - 0.5)
    assert running == pytest.approx(0.475)
    # first call: baseline = batch mean, and it seeds the running value
    adv, running = reinforce_advantages(r, "moving_average", running_mean=None)
    assert_close(adv, r - 0.25) and running == pytest.approx(0.25)
    adv, _ = reinforce_advantages(r, "none")
    assert_close(adv, r)


def test_reinforce_moving_average_matches_loop():
    batches = [_rand_rewards(s) for s in range(4)]
    running, loop_running = None, None
    for r in batches:
        adv, running = reinforce_advantages(r, "moving_average", running, momentum=0.8)
        m = statistics.mean(r.flatten().tolist())
        base = m if loop_running is None else loop_running
        loop_running = m if loop_running is None else 0.8 * loop_running + 0.2 * m
        assert_close(adv, r - base)
        assert running == pytest.approx(loop_running)


# --------------------------------------------------------------------------- REINFORCE++


def test_discounted_returns_hand_values():
    # gamma 0.5, row 0 rewards [-0.05, 0, 1.1]: G2 = 1.1, G1 = 0.55, G0 = -0.05 + 0.275 = 0.225
    # row 1 has a hole at t=1 (skipped, not a discount step): G2 = 2, G0 = 1 + 0.5 * 2 = 2
    r = torch.tensor([[-0.05, 0.0, 1.1], [1.0, 9.0, 2.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=D)
    assert_close(discounted_returns(r, mask, 0.5), torch.tensor([[0.225, 0.55, 1.1], [2.0, 0.0, 2.0]], dtype=D))


def test_reinforce_pp_hand_values():
    # beta 0.5, k1 = logp - ref = [[0.1, 0, -0.2], [0.2, 0.1, pad]], rewards [1, 0], gamma 1
    # token rewards: [[-0.05, 0, 0.1 + 1], [-0.1, -0.05, -]]
    # returns:       [[1.05, 1.1, 1.1], [-0.15, -0.05, -]]
    # whiten over the 5 valid: mean 0.61, population var 0.3374
    logp = torch.tensor([[0.1, 0.0, -0.2], [0.2, 0.1, 5.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    out = reinforce_pp_advantages(torch.tensor([[1.0, 0.0]], dtype=D), logp, torch.zeros_like(logp), mask, beta=0.5, eps=0.0)
    returns = torch.tensor([[1.05, 1.1, 1.1], [-0.15, -0.05, 0.61]], dtype=D)
    expected = (returns - 0.61) / math.sqrt(0.3374)
    assert_close(out, expected * mask)


def test_reinforce_pp_matches_loop_and_flat_case():
    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    lengths = [5, 2, 3, 1, 5, 4]
    mask = (torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(-1)).to(D)
    logp, ref = torch.randn(2, N, T, generator=g, dtype=D)
    rewards = torch.randint(0, 2, (2, 3), generator=g).to(D)
    out = reinforce_pp_advantages(rewards, logp, ref, mask, beta=0.1, gamma=0.9)
    all_returns = []
    for i in range(N):
        rs = [-0.1 * (logp[i, t] - ref[i, t]).item() for t in range(lengths[i])]
        rs[-1] += rewards.flatten()[i].item()
        G, acc = [], 0.0
        for x in reversed(rs):
            acc = x + 0.9 * acc
            G.insert(0, acc)
        all_returns.append(G)
    flat = [x for G in all_returns for x in G]
    mu, sd = statistics.mean(flat), statistics.pstdev(flat)
    for i in range(N):
        for t in range(T):
            want = (all_returns[i][t] - mu) / (sd + 1e-8) if t < lengths[i] else 0.0
            assert out[i, t].item() == pytest.approx(want, abs=1e-9)
    flat_out = reinforce_pp_advantages(torch.ones(2, 3, dtype=D), logp, logp, mask, beta=0.1)
    assert torch.equal(flat_out, torch.zeros_like(flat_out))


# --------------------------------------------------------------------------- GAE


def test_gae_hand_values():
    # gamma 1, lam 0.5.
    # row 0: r [0, 0, 1], V [0.5, 0.6, 0.7]: deltas [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.15 = 0.25,
    #        A0 = 0.1 + 0.125 = 0.225; returns A + V = [0.725, 0.85, 1.0]
    # row 1: mask [1, 1, 0], r [0, 2, 9], V [1, 1, 9]: delta1 = 2 - 1 = 1 (terminal), delta0 = 0 + 1 - 1 = 0
    #        A = [0.5, 1, 0]; returns [1.5, 2, 0]
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]], dtype=D)
    v = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    adv, ret = gae_advantages(r, v, mask, gamma=1.0, lam=0.5)
    assert_close(adv, torch.tensor([[0.225, 0.25, 0.3], [0.5, 1.0, 0.0]], dtype=D))
    assert_close(ret, torch.tensor([[0.725, 0.85, 1.0], [1.5, 2.0, 0.0]], dtype=D))


def _gae_loop(rewards, values, gamma, lam):
    adv, nxt_v, nxt_a = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * nxt_v - values[t]
        nxt_a = delta + gamma * lam * nxt_a
        nxt_v = values[t]
        adv[t] = nxt_a
    return adv


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.9, 0.95), (0.99, 0.0)])
def test_gae_matches_loop_with_ragged_and_left_padding(gamma, lam):
    g = torch.Generator().manual_seed(1)
    N, T = 5, 6
    r, v = torch.randn(2, N, T, generator=g, dtype=D)
    mask = torch.zeros(N, T, dtype=D)
    spans = [(0, 6), (0, 2), (3, 6), (1, 4), (0, 1)]  # right-padded, left-padded, both
    for i, (a, b) in enumerate(spans):
        mask[i, a:b] = 1
    adv, ret = gae_advantages(r, v, mask, gamma, lam)
    for i, (a, b) in enumerate(spans):
        want = _gae_loop(r[i, a:b].tolist(), v[i, a:b].tolist(), gamma, lam)
        assert_close(adv[i, a:b], torch.tensor(want, dtype=D))
        assert_close(ret[i, a:b], torch.tensor(want, dtype=D) + v[i, a:b])
        assert (adv[i, :a] == 0).all() and (adv[i, b:] == 0).all()
    # gamma = lam = 1 with zero values: advantages are the plain returns-to-go
    adv1, _ = gae_advantages(r, torch.zeros_like(v), mask, 1.0, 1.0)
    assert_close(adv1, discounted_returns(r, mask, 1.0))


# --------------------------------------------------------------------------- reward normalisation


def test_rank_normalize_hand_values_and_loop():
    # [3, 1, 2, 2]: 0-based average ranks [3, 0, 1.5, 1.5]; (rank - 1.5) / 3
    out = rank_normalize(torch.tensor([[3.0, 1.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]]))
    assert_close(out, torch.tensor([[0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    r = _rand_rewards(6)
    out = rank_normalize(r)
    for b, row in enumerate(r.tolist()):
        for g, x in enumerate(row):
            rank = sum(y < x for y in row) + (sum(y == x for y in row) - 1) / 2
            assert out[b, g].item() == pytest.approx((rank - 2.5) / 5)
    assert_close(rank_normalize(r), rank_normalize(r**3 + 7))  # invariant to increasing transforms


def test_running_reward_norm_matches_concatenated_statistics():
    batches = [_rand_rewards(s) for s in range(3)]
    state = RewardNormState()
    for b in batches:
        state = update_reward_norm_state(state, b)
    allr = torch.cat([b.flatten() for b in batches])
    assert state.count == allr.numel()
    assert state.mean == pytest.approx(float(allr.mean()))
    assert state.var == pytest.approx(float(allr.var(unbiased=False)))
    # hand: first batch [1, 3] -> mean 2, var 1; normalised [-1, 1]
    out, st = normalize_rewards(torch.tensor([[1.0, 3.0]]), "running", None, eps=0.0)
    assert_close(out, torch.tensor([[-1.0, 1.0]]))
    assert (st.count, st.mean, st.var) == (2.0, 2.0, 1.0)
    assert normalize_rewards(R, "none")[0] is R
    assert_close(normalize_rewards(R, "rank")[0], rank_normalize(R))


# --------------------------------------------------------------------------- DAPO pieces


def test_dynamic_sampling_keep():
    assert dynamic_sampling_keep(R).tolist() == [True, False, True]
    assert dynamic_sampling_keep(torch.tensor([[0.0, 0.0], [0.5, 0.5000001]])).tolist() == [False, True]


def test_overlong_penalty_hand_values():
    # max_len 10, cache 4: soft limit 6. L=5,6 -> 0; L=7 -> (6-7)/4 = -0.25; L=10 -> -1; L=11 -> -1
    out = overlong_penalty(torch.tensor([5, 6, 7, 8, 10, 11]), max_len=10, cache_len=4, penalty=1.0)
    assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    assert_close(overlong_penalty(torch.tensor([8]), 10, 4, penalty=0.5), torch.tensor([-0.25]))
    with pytest.raises(ValueError):
        overlong_penalty(torch.tensor([1]), 10, 0)


def test_mask_truncated():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=D)
    assert_close(mask_truncated(mask, torch.tensor([False, True])), torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=D))


def test_weight_positive_scales_the_rewarded_samples_and_keeps_the_penalised():
    adv = grpo_advantages(R)  # [[+a, -a, -a, +a], [0]*4, [-b, -b, -b, +3b]]
    assert_close(weight_positive(adv, 0.1), torch.where(adv > 0, 0.1 * adv, adv))
    nsr = weight_positive(adv, 0.0)
    assert (nsr <= 0).all()
    assert_close(nsr[adv < 0], adv[adv < 0])
    assert (nsr[1] == 0).all()  # a flat group stays without signal
    assert weight_positive(adv, 1.0).equal(adv)


# ---- pass@k (max@k) leave-one-out advantages ----

def _passk_by_enumeration(rewards: list[float], k: int) -> list[float]:
    """A_g from the definition: mean over (k-1)-subsets of the others of the subset's max with r_g, minus the
    mean over k-subsets of the others of their max."""
    from itertools import combinations
    out = []
    for g, r in enumerate(rewards):
        others = rewards[:g] + rewards[g + 1:]
        s = statistics.mean(max([r, *t]) for t in combinations(others, k - 1))
        b = statistics.mean(max(t) for t in combinations(others, k))
        out.append(s - b)
    return out


@pytest.mark.parametrize("k", [2, 3, 5])
def test_pass_at_k_advantages_match_the_subset_enumeration(k):
    from reasonloop.algos.advantages import pass_at_k_advantages
    gen = torch.Generator().manual_seed(k)
    rewards = torch.rand(3, 6, generator=gen, dtype=torch.float64)
    rewards[1] = (rewards[1] > 0.5).double()  # a 0/1 group, with ties
    got = pass_at_k_advantages(rewards, k)
    want = torch.tensor([_passk_by_enumeration(row.tolist(), k) for row in rewards], dtype=torch.float64)
    assert_close(got, want)


def test_pass_at_k_advantages_binary_closed_form_and_edge_cases():
    from reasonloop.algos.advantages import pass_at_k_advantages
    r = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0], [0.0] * 8])
    a = pass_at_k_advantages(r, 4)
    # the lone right sample: every 4 of the others are wrong, so it earns 1; a wrong one: its 3 companions hold
    # the right one with p 3/7, 4 others hold it with p 4/7, so it loses 1/7
    assert_close(a[0], torch.tensor([1.0] + [-1 / 7] * 7))
    # 7 of 8 right: any 4 samples hold a right one, with or without any single sample: no signal at k=4
    assert_close(a[1], torch.zeros(8))
    assert torch.equal(a[2], torch.zeros(8))
    # k = 1 is RLOO; k above G - 1 is clamped to it
    g = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    assert_close(pass_at_k_advantages(g, 1), rloo_advantages(g))
    assert_close(pass_at_k_advantages(g, 9), pass_at_k_advantages(g, 4))
    with pytest.raises(ValueError):
        pass_at_k_advantages(g, 0)
