"""Potential-based shaping (hand-computed values, telescoping) and process-reward hooks."""

import pytest
import torch

from reasonloop.rewards.process import aggregate, process_reward, split_steps, step_rewards
from reasonloop.rewards.shaping import discounted_return, shape_rewards


def test_shaping_hand_computed_with_ragged_mask():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    potentials = torch.tensor([[0.1, 0.4, 0.8], [0.2, 9.0, 9.0]])  # padded potentials must be ignored
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    shaped = shape_rewards(rewards, potentials, mask, gamma=0.5)
    # row 0: 0 + .5*.4 - .1 = .1 ; 0 + .5*.8 - .4 = 0 ; 1 + .5*0 - .8 = .2 ; row 1: .5 + 0 - .2 = .3
    assert torch.allclose(shaped, torch.tensor([[0.1, 0.0, 0.2], [0.3, 0.0, 0.0]]))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_shaping_telescopes_to_return_minus_initial_potential(gamma):
    g = torch.Generator().manual_seed(0)
    rewards, potentials = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = (torch.arange(6) < torch.tensor([[6], [3], [1], [5]])).long()
    shaped = shape_rewards(rewards, potentials, mask, gamma)
    expected = discounted_return(rewards, mask, gamma) - potentials[:, 0]
    assert torch.allclose(discounted_return(shaped, mask, gamma), expected, atol=1e-6)


def test_shaping_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        shape_rewards(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


class LengthScorer:
    """A stand-in PRM: a step's score is 1/len(words) (deterministic, step-dependent)."""

    def score_steps(self, prompt, steps):
        return [1.0 / len(s.split()) for s in steps]


COMPLETION = "<think>First add 2 and 3.\n\nThat gives 5.\nDone</think><answer>5</answer>"


def test_split_steps_modes_and_spans():
    steps = split_steps(COMPLETION, "think_lines")
    assert [s.text for s in steps] == ["First add 2 and 3.", "That gives 5.", "Done"]
    assert all(COMPLETION[s.start : s.end] == s.text for s in steps)
    assert len(split_steps("a\n\nb\nc", "paragraphs")) == 2
    with pytest.raises(ValueError):
        split_steps("x", "sentences")


@pytest.mark.parametrize("how,expected", [("min", 0.2), ("last", 1.0), ("mean", (0.2 + 1 / 3 + 1.0) / 3), ("prod", 0.2 / 3)])
def test_process_reward_aggregations(how, expected):
    reward = process_reward(LengthScorer(), how=how, split="think_lines")
    assert reward(prompts=["p", "p"], completions=[COMPLETION, "   "]) == [pytest.approx(expected), None]


def test_step_scorer_must_return_one_score_per_step():
    class Broken:
        def score_steps(self, prompt, steps):
            return [1.0]

    with pytest.raises(ValueError, match="1 scores for 3 steps"):
        step_rewards(Broken(), "p", COMPLETION, "think_lines")
    assert aggregate([], "min") is None


def test_step_spans_are_contiguous_and_keep_delimiters():
    from reasonloop.rewards.process import step_spans

    text = "<think>17+4=21;21-9=12</think><answer>12</answer>"
    steps = step_spans(text)
    assert [s.text for s in steps] == ["<think>17+4=21;", "21-9=12</think>", "<answer>12</answer>"]
    assert "".join(s.text for s in steps) == text and [s.start for s in steps] == [0, 15, 30]
    assert [s.text for s in step_spans("<think>1+2=3;")] == ["<think>1+2=3;"]
    assert step_spans("") == []
    with pytest.raises(ValueError):
        step_spans("x", [""])
