"""scripts/travel_skill.py: pass@k split into what reading the question earns and what the answer prior earns."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("travel_skill", ROOT / "scripts" / "travel_skill.py")
skill = importlib.util.module_from_spec(spec)
spec.loader.exec_module(skill)


def test_a_model_that_answers_5_to_everything_has_no_skill():
    gold = ["5", "5", "6", "7"]  # every sample of every prompt says 5
    hits = lambda i, j: 8 if gold[j] == "5" else 0  # noqa: E731
    own, prior = skill.pass_and_prior(hits, n=4, k=8, shifts=3)
    # pass@8: prompts 0 and 1 -> 0.5; prior: of the 12 pairs (i, i+1..3 mod 4) the gold is 5 in 6
    assert own == 0.5
    assert prior == 0.5


def test_a_model_that_reads_the_question_has_pass_at_k_above_its_prior():
    hits = lambda i, j: 2 if i == j else 0  # noqa: E731  two of eight samples right, each for its own prompt
    own, prior = skill.pass_and_prior(hits, n=5, k=8, shifts=2)
    assert own == 1.0 and prior == 0.0


def test_prior_is_unbiased_pass_at_k_on_the_shifted_pairs():
    # prompt 0's samples hold one answer right for prompt 1's gold; shifts=1 -> pairs (0,1), (1,0)
    hits = lambda i, j: {(0, 0): 0, (1, 1): 0, (0, 1): 1, (1, 0): 0}[(i, j)]  # noqa: E731
    own, prior = skill.pass_and_prior(hits, n=2, k=2, shifts=1)
    assert own == 0.0
    assert prior == pytest.approx(0.5)  # pass@2 with 1 of 2 right is 1, averaged with 0
