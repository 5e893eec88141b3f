"""MFLO's maths by hand (calibration error, Brier score, the confidence loss)."""

from __future__ import annotations

import math

import pytest
import torch

from reasonloop.algos.calibration import brier_score, expected_calibration_error
from reasonloop.frameworks.mflo import confidence_loss


def test_expected_calibration_error_by_hand():
    conf = torch.tensor([0.9, 0.9, 0.2, 0.4, 1.0])
    correct = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    # bin 9: {.9, .9, 1.0} accuracy 2/3, confidence 2.8/3 -> 3/5 * |2/3 - 2.8/3| = 0.16
    # bin 2: {.2} -> 1/5 * .2 = .04; bin 4: {.4} correct -> 1/5 * .6 = .12
    assert expected_calibration_error(conf, correct) == pytest.approx(0.16 + 0.04 + 0.12)
    assert expected_calibration_error(torch.tensor([]), torch.tensor([])) == 0.0
    perfect = torch.tensor([1.0, 0.0])
    assert expected_calibration_error(perfect, perfect) == 0.0


def test_brier_score_by_hand():
    assert brier_score(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 1.0])) == pytest.approx((0.01 + 0.64) / 2)


def test_confidence_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # row 0 correct: -log sigmoid(2); row 1 wrong: -log(1 - sigmoid(0)) = log 2 twice; the masked one is out
    want = (math.log1p(math.exp(-2.0)) + 2 * math.log(2.0)) / 3
    assert float(confidence_loss(logits, torch.tensor([1.0, 0.0]), mask)) == pytest.approx(want, abs=1e-6)
