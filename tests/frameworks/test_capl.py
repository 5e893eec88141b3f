"""CAPL's maths by hand: the forced openings, the switch's targets and the accuracy/tokens curve."""

from __future__ import annotations

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.frameworks import capl
from reasonloop.frameworks._common import opening


def test_openings_force_step_by_step_or_the_whole_chain():
    assert opening("Q: 17+4-9=?\n", 1) == "<think>17+4="
    assert opening("Q: 17+4-9=?\n", 2) == "<think>17+4-9="
    assert opening("Q: 17+4-9=?\n", 99) == "<think>17+4-9="
    assert opening("anything", 0) == ""
    with pytest.raises(ValueError, match="needs an arithmetic prompt"):
        opening("Write a poem", 1)


def test_switch_targets_by_hand():
    acc = torch.tensor([[1.0, 0.5], [0.5, 0.5]])  # (think, direct)
    tokens = torch.tensor([[20.0, 10.0], [20.0, 10.0]])
    target, weight = capl.switch_targets(acc, tokens, token_cost=0.5, max_tokens=20)
    # row 0: 1 - .5 = .5 against .5 - .25 = .25 -> think, by .25; row 1: 0 against .25 -> direct, by .25
    assert target.tolist() == [1.0, 0.0]
    assert weight.tolist() == pytest.approx([0.25, 0.25])


def test_curve_by_hand():
    points = capl.curve([0.9, 0.2], [(True, 20), (True, 30)], [(False, 10), (True, 12)], thresholds=(0.0, 0.5, 1.01))
    assert points == [
        {"threshold": 0.0, "think_rate": 1.0, "accuracy": 1.0, "tokens": 25.0},
        {"threshold": 0.5, "think_rate": 0.5, "accuracy": 1.0, "tokens": 16.0},
        {"threshold": 1.01, "think_rate": 0.0, "accuracy": 0.5, "tokens": 11.0},
    ]


def test_group_size_must_split_evenly():
    with pytest.raises(ConfigError, match="group_size must be even and >= 4, got 5"):
        load_config(capl.Config, ["group_size=5"])


def test_fit_switch_follows_the_token_cost():
    # one-operation prompts: both modes equally right, think costs 10 more tokens; four-operation prompts:
    # thinking is right, the direct answer wrong
    easy, hard = [1.0, 0.5, 0.25, 0.5, 0.3], [1.0, 1.25, 1.0, 0.5, 0.6]
    feats = torch.tensor([easy, hard] * 4)
    stats = torch.tensor([[[1.0, 20.0], [1.0, 10.0]], [[1.0, 30.0], [0.0, 12.0]]] * 4)
    switch = capl.fit_switch(feats, stats, token_cost=1.0, max_tokens=64)
    free = capl.fit_switch(feats, stats, token_cost=0.0, max_tokens=64)
    with torch.no_grad():
        p = torch.sigmoid(switch(torch.tensor([easy, hard]))[:, 0])
        assert float(p[0]) < 0.5 < float(p[1])  # answer the easy one directly, think on the hard one
        assert float(torch.sigmoid(free(torch.tensor([hard]))[0, 0])) > 0.5
