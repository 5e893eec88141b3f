"""Process-reward maths (algos/process.py) against hand computations, and its place in the estimator registry."""

import math

import pytest
import torch

from reasonloop.algos import advantages as adv
from reasonloop.algos.estimators import AdvantageInput, estimate
from reasonloop.algos.process import (
    implicit_prm_loss,
    implicit_process_rewards,
    prime_advantages,
    process_grpo_advantages,
    returns_to_go,
)

D = torch.float64


def test_returns_to_go_sums_the_rewards_at_and_after_each_token():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0]], dtype=D)
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=D)
    torch.testing.assert_close(returns_to_go(r, m), torch.tensor([[6.0, 5.0, 3.0, 0.0]], dtype=D))


def test_process_grpo_normalises_over_the_groups_steps_and_sums_the_steps_ahead():
    # one group of two completions; steps end at tokens 1 and 3 (row 0) and token 2 (row 1)
    rewards = torch.tensor([[0, 1.0, 0, 0.5, 0], [0, 0, 0.0, 0, 0]], dtype=D)
    marks = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=D)
    out = process_grpo_advantages(rewards, marks, mask, (2,))
    # step rewards {1, 0.5, 0}: mean 0.5, Bessel std 0.5 -> normalised 1, 0, -1
    s = 0.5 + 1e-6
    n1, n2, n3 = 0.5 / s, 0.0, -0.5 / s
    expected = torch.tensor([[n1 + n2, n1 + n2, n2, n2, 0.0], [n3, n3, n3, 0.0, 0.0]], dtype=D)
    torch.testing.assert_close(out, expected)


def test_process_grpo_gives_zero_to_groups_whose_steps_agree_and_is_per_group():
    rewards = torch.tensor([[0.7, 0.7], [0.7, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=D)
    marks = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 0]], dtype=D)
    out = process_grpo_advantages(rewards, marks, torch.ones(4, 2, dtype=D), (2, 2))
    assert torch.equal(out[:2], torch.zeros(2, 2, dtype=D))  # all three steps of group 0 score 0.7
    a = 0.5 / (2 ** -0.5 + 1e-6)
    torch.testing.assert_close(out[2:], torch.tensor([[a, 0.0], [-a, 0.0]], dtype=D))


def test_prime_advantages_hand_computed_without_whitening():
    outcome = torch.tensor([1.0, 0.0, 0.0], dtype=D)  # one group of three
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=D)
    proc = torch.tensor([[0.3, 0.0, 0.3], [0.1, -0.1, 0.0], [0.6, 0.0, 0.0]], dtype=D)
    out = prime_advantages(outcome, proc, mask, mask, (3,), process_coef=2.0, whiten=False)
    # outcome RLOO: 1 - 0 = 1, 0 - 0.5, 0 - 0.5, on each row's last token
    # per-token process means 0.2, 0, 0.6 -> leave-one-out baselines 0.3, 0.4, 0.1
    rows = [
        [2 * (0.3 - 0.3), 2 * (0.0 - 0.3), 2 * (0.3 - 0.3) + 1.0],
        [2 * (0.1 - 0.4), 2 * (-0.1 - 0.4) - 0.5, 0.0],
        [2 * (0.6 - 0.1) - 0.5, 0.0, 0.0],
    ]
    token_rewards = torch.tensor(rows, dtype=D)
    expected = token_rewards.flip(-1).cumsum(-1).flip(-1) * mask
    torch.testing.assert_close(out, expected)


def test_prime_advantages_whitened_and_outcome_only_reduce_to_rloo():
    outcome = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D)
    mask = torch.ones(4, 3, dtype=D)
    out = prime_advantages(outcome, None, None, mask, (2, 2), whiten=False)
    rloo = adv.rloo_advantages(outcome.view(2, 2)).reshape(-1, 1)
    torch.testing.assert_close(out, rloo.expand(4, 3))  # the outcome return reaches every token
    whitened = prime_advantages(outcome, None, None, mask, (2, 2), whiten=True)
    assert float(whitened.mean()) == pytest.approx(0.0, abs=1e-9)
    assert float(whitened.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


def test_implicit_reward_and_loss_match_a_hand_computation():
    prm = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.4, -9.0]], dtype=D)
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.2, -0.2, -1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    r = implicit_process_rewards(prm, ref, mask, beta=0.5)
    torch.testing.assert_close(r, torch.tensor([[0.25, 0.0, 0.25], [0.0, -0.1, 0.0]], dtype=D))
    loss, m = implicit_prm_loss(prm, ref, mask, torch.tensor([1.0, 1.0], dtype=D), beta=0.5)
    # sequence rewards 0.5 and -0.1, both labelled correct
    expected = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(1 / (1 + math.exp(0.1)))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert float(m["accuracy"]) == 0.5 and float(m["reward"]) == pytest.approx(0.2)


def test_implicit_prm_loss_summed_over_micro_batches_equals_the_whole():
    torch.manual_seed(0)
    prm, ref = -torch.rand(6, 4, dtype=D), -torch.rand(6, 4, dtype=D)
    mask, labels = torch.ones(6, 4, dtype=D), torch.tensor([1.0, 0, 1, 0, 0, 1], dtype=D)
    whole, _ = implicit_prm_loss(prm, ref, mask, labels, beta=0.1)
    parts = sum(implicit_prm_loss(prm[s], ref[s], mask[s], labels[s], beta=0.1, normalizer=6)[0]
                for s in (slice(0, 4), slice(4, 6)))
    assert float(parts) == pytest.approx(float(whole), rel=1e-12)


def test_a_gradient_step_on_the_implicit_prm_loss_separates_right_from_wrong():
    """Direction: the implicit reward of the labelled-correct sequence rises, the wrong one's falls."""
    logits = torch.zeros(2, 3, 5, dtype=D, requires_grad=True)  # a toy 'policy': free logits per position
    tokens = torch.tensor([[0, 1, 2], [3, 4, 0]])
    ref = torch.log_softmax(torch.zeros(2, 3, 5, dtype=D), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    mask, labels = torch.ones(2, 3, dtype=D), torch.tensor([1.0, 0.0], dtype=D)

    def seq_rewards():
        lp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return lp, implicit_process_rewards(lp, ref, mask, beta=0.5).sum(-1)

    lp, _ = seq_rewards()
    loss, _ = implicit_prm_loss(lp, ref, mask, labels, beta=0.5)
    loss.backward()
    with torch.no_grad():
        logits -= 1.0 * logits.grad
    _, after = seq_rewards()
    assert after[0] > 0 > after[1]


def test_sequence_estimators_add_the_process_advantage_to_the_outcome_one():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=D)
    mask = torch.ones(4, 3, dtype=D)
    proc = torch.tensor([[0, 0.9, 0.2], [0, 0.1, 0.0], [0.5, 0, 0.5], [0, 0, 0.5]], dtype=D)
    marks = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=D)
    for name in ("grpo", "rloo"):
        plain = estimate(name, AdvantageInput(rewards, (2, 2), mask)).advantages
        with_process = estimate(name, AdvantageInput(rewards, (2, 2), mask, process_rewards=proc, process_mask=marks,
                                                     process_coef=0.5)).advantages
        torch.testing.assert_close(with_process, plain + 0.5 * process_grpo_advantages(proc, marks, mask, (2, 2)))


def test_the_prime_estimator_is_prime_advantages():
    rewards, mask = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D), torch.ones(4, 2, dtype=D)
    proc = torch.tensor([[0.1, 0.2], [-0.1, 0.0], [0.0, 0.3], [0.2, 0.2]], dtype=D)
    out = estimate("prime", AdvantageInput(rewards, (2, 2), mask, process_rewards=proc, process_mask=mask,
                                           process_coef=3.0, whiten=False))
    torch.testing.assert_close(out.advantages, prime_advantages(rewards, proc, mask, mask, (2, 2), 3.0, whiten=False))


def test_process_rewards_and_mask_come_together_and_match_the_mask_shape():
    r, m = torch.zeros(2), torch.ones(2, 3)
    with pytest.raises(ValueError, match="come together"):
        AdvantageInput(r, (2,), m, process_rewards=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="process_rewards"):
        AdvantageInput(r, (2,), m, process_rewards=torch.zeros(2, 4), process_mask=torch.zeros(2, 4))
