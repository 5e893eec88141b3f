"""AHRO's maths, hand-computed: the within-group correlation, the weighted shaping, the components, and one
step of the weight network in the direction the correlation says."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from reasonloop.algos.reward_weights import grouped_correlation, weighted_shaping
from reasonloop.frameworks.ahro import AHROConfig, AHROTrainer, WeightNet, shaping_components
from reasonloop.frameworks._common import prompt_features


def test_grouped_correlation_by_hand():
    d = torch.tensor([1.0, 0.0, 5.0, 5.0, 2.0, 0.0])
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    # group 2 is all correct: left out. group 1: dc=(.5,-.5), yc=(.5,-.5); group 3: dc=(1,-1), yc=(-.5,.5)
    # sum dc*yc = .5 - 1 = -.5; sum dc^2 = 2.5; sum yc^2 = 1
    assert float(grouped_correlation(d, y, [2, 2, 2])) == pytest.approx(-0.5 / math.sqrt(2.5), abs=1e-6)
    assert float(grouped_correlation(d, torch.ones(6), [2, 2, 2])) == 0.0
    with pytest.raises(ValueError, match="do not match"):
        grouped_correlation(d, y, [3, 2])


def test_weighted_shaping_by_hand():
    comps = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]])
    weights = torch.tensor([[0.2, 0.4, 0.1], [0.3, 0.3, 0.3]])
    assert weighted_shaping(comps, weights).tolist() == pytest.approx([0.4, 0.6])


def test_shaping_components_by_hand():
    right = "<think>17+4=21;21-9=12</think><answer>12</answer>"  # 7 + 15 + 8 + 8 + 2 + 9 = 49 characters
    c = shaping_components([right, "12"], length_scale=64)
    assert c[0].tolist() == pytest.approx([1.0, 1.0, 1 - 49 / 64])
    assert c[1].tolist() == pytest.approx([0.0, 0.0, 1 - 2 / 64])


def test_prompt_features_by_hand():
    assert prompt_features("Q: 17+4-9=?\n") == pytest.approx([1.0, 3 / 4, 2 / 4, 2 / 2, 12 / 32])


def test_weight_net_starts_at_half_the_bound_and_learns_towards_the_agreeing_component():
    torch.manual_seed(0)
    net = WeightNet(0.5)
    feats = torch.tensor([prompt_features("Q: 1+2-3=?\n")] * 4)
    assert torch.equal(net(feats), torch.full((4, 3), 0.25))
    # in both groups step validity follows correctness and efficiency goes against it
    comps = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.2], [1.0, 0.0, 0.9]])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    stub = SimpleNamespace(weight_net=net, weight_optimizer=torch.optim.Adam(net.parameters(), lr=0.05),
                           cfg=SimpleNamespace(ahro=AHROConfig()))
    with torch.no_grad():
        before = float(grouped_correlation(weighted_shaping(comps, net(feats)), y, [2, 2]))
    for _ in range(20):
        AHROTrainer._train_weights(stub, feats, comps, y, [2, 2])
    with torch.no_grad():
        w = net(feats)[0]
        assert float(w[1]) > 0.25 > float(w[2])  # step validity up, efficiency down
        assert float(grouped_correlation(weighted_shaping(comps, net(feats)), y, [2, 2])) > before
