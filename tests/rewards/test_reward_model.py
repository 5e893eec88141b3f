"""Sequence-classifier reward model, loaded through the real `from_pretrained` path."""

import pytest

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec, compute_rewards
from reasonloop.rewards.reward_model import RewardModel

PROMPTS = ["What is 2+2?", "Name a colour.", "What is 2+2?"]
COMPLETIONS = ["<think>2+2</think><answer>4</answer>", "red", "<think>hmm, let me think for a long while</think><answer>5</answer>"]


def test_scores_are_deterministic_and_batch_invariant(tiny_rm_dir):
    batched = RewardModel.from_pretrained(tiny_rm_dir, batch_size=3).score(PROMPTS, COMPLETIONS)
    single = RewardModel.from_pretrained(tiny_rm_dir, batch_size=1).score(PROMPTS, COMPLETIONS)
    assert len(batched) == 3
    assert batched == pytest.approx(single, abs=1e-5)  # padding must not change a row's score
    assert len(set(round(s, 6) for s in batched)) == 3  # different inputs, different scores


def test_truncation_keeps_the_end_of_the_completion(tiny_rm_dir):
    rm = RewardModel.from_pretrained(tiny_rm_dir, max_length=16)
    a, b = rm.score(["x" * 100, "y" * 100], ["<answer>4</answer>", "<answer>4</answer>"])
    assert a == pytest.approx(b, abs=1e-5)  # only the shared tail is seen


def test_as_reward_fn_plugs_into_compute_rewards(tiny_rm_dir):
    rm = RewardModel.from_pretrained(tiny_rm_dir)
    examples = [Example(prompt=p, answer="4") for p in PROMPTS]
    result = compute_rewards([RewardSpec("rm", rm.as_reward_fn(), 0.5)], COMPLETIONS, examples)
    assert result.errors == {}
    assert result.components["rm"].tolist() == pytest.approx(rm.score(PROMPTS, COMPLETIONS), abs=1e-5)
    assert result.total.tolist() == pytest.approx([0.5 * s for s in rm.score(PROMPTS, COMPLETIONS)], abs=1e-5)
