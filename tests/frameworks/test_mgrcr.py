"""MGRCR's consistency rewards, hand-computed, and its total reward."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from reasonloop.frameworks.mgrcr import consistency_components
from reasonloop.rewards.consistency import (answer_agreement, equations, exact_value, group_agreement,
                                            group_diversity, step_validity)

RIGHT = "<think>17+4=21;21-9=12</think><answer>12</answer>"
SLIP = "<think>17+4=21;21-9=11</think><answer>12</answer>"  # second step false; answer not the last result


def test_equations_split_at_steps_and_skip_restatements():
    assert equations(RIGHT) == [("17+4", "21"), ("21-9", "12")]
    assert equations("<think>5=5;2*3=6</think><answer>6</answer>") == [("2*3", "6")]
    assert equations("<think>no maths</think><answer>1</answer>") == []


def test_exact_value_is_rational_and_refuses_anything_but_arithmetic():
    assert exact_value("(3*4)/8") == Fraction(3, 2)
    assert exact_value("0.1+0.2") == Fraction(3, 10)  # exact, where floats give 0.30000000000000004
    assert exact_value("1/0") is None
    assert exact_value("__import__('os')") is None
    assert exact_value("2**3") is None  # powers are not in the grammar


def test_step_validity_and_answer_agreement_by_hand():
    assert step_validity(RIGHT) == 1.0
    assert step_validity(SLIP) == 0.5
    assert step_validity("<think>17+4-9=12</think><answer>12</answer>") == 1.0  # a lazy step, still true
    assert step_validity("<think>x</think><answer>1</answer>") is None
    assert answer_agreement(RIGHT) == 1.0
    assert answer_agreement(SLIP) == 0.0
    assert answer_agreement("<think>1+1=2</think>") is None


def test_group_agreement_and_diversity_by_hand():
    assert group_agreement([12, 12, 11, None]) == pytest.approx([1 / 3, 1 / 3, 0.0, 0.0])
    assert group_diversity(["a", "a", "b", "a"]) == pytest.approx([1 / 3, 1 / 3, 1.0, 1 / 3])


def test_consistency_components_per_group():
    comps = consistency_components([RIGHT, RIGHT, SLIP, "junk"], [12, 12, 12, None], group_size=2)
    assert comps["step_validity"].tolist() == [1.0, 1.0, 0.5, 0.0]
    assert comps["answer_agreement"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert comps["group_agreement"].tolist() == [1.0, 1.0, 0.0, 0.0]  # groups: (RIGHT, RIGHT), (SLIP, junk)
    assert comps["diversity"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert all(v.dtype == torch.float32 for v in comps.values())
