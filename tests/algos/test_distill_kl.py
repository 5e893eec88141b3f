"""Reverse KL for on-policy distillation: a hand value, zero at equality, micro-batch invariance, direction."""

import math

import pytest
import torch

from reasonloop.algos.distill import reverse_kl_tokens


def test_hand_value():
    # p_s = (0.5, 0.5), p_t = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    s = torch.log(torch.tensor([[[0.5, 0.5]]]))
    t = torch.log(torch.tensor([[[0.25, 0.75]]]))
    loss, m = reverse_kl_tokens(s, t, torch.ones(1, 1), normalizer=1.0)
    assert float(loss) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert m["tokens"] == 1.0


def test_zero_when_equal_and_mask_respected():
    logits = torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, _ = reverse_kl_tokens(logits, logits.clone(), mask, 3.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    t = logits.clone()
    t[0, 2] += torch.randn(5) * 5  # a masked position: must not count
    t[1, 1:] -= 3.0 * torch.arange(5.0)
    loss, _ = reverse_kl_tokens(logits, t, mask, 3.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_micro_batch_sums_equal_whole_batch():
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    whole, _ = reverse_kl_tokens(s, t, mask, float(mask.sum()))
    parts = sum(reverse_kl_tokens(s[i : i + 1], t[i : i + 1], mask[i : i + 1], float(mask.sum()))[0] for i in range(4))
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_one_step_moves_student_toward_teacher():
    torch.manual_seed(0)
    student = torch.zeros(1, 1, 4, requires_grad=True)
    teacher = torch.tensor([[[3.0, 0.0, 0.0, 0.0]]])
    before, _ = reverse_kl_tokens(student, teacher, torch.ones(1, 1), 1.0)
    before.backward()
    with torch.no_grad():
        stepped = (student - 0.5 * student.grad).detach()
    after, _ = reverse_kl_tokens(stepped, teacher, torch.ones(1, 1), 1.0)
    assert float(after) < float(before.detach())
    assert stepped.softmax(-1)[0, 0, 0] > 0.25  # more mass on the teacher's mode
