"""Marker counters and the notation-consistency reward on hand-written thoughts."""

from __future__ import annotations

import pytest

from reasonloop.rewards.thought import (
    MarkerCounter,
    notation_consistency,
    notation_consistency_reward,
    StepCounts,
    step_counts,
    thought_of,
)


def test_thought_is_the_think_blocks_and_none_without_one():
    assert thought_of("<think>1+2=3</think><answer>3</answer>") == "1+2=3"
    assert thought_of("<think>a</think>x<think>b</think>") == "a\nb"
    assert thought_of("<answer>def f(a):return a</answer>") is None


@pytest.mark.parametrize("thought, expected", [
    ("17+4=21;21-9=12", 1.0),               # careful steps
    ("17+4-9=12", 1.0),                     # the lazy chain is in notation too
    ("17+4=21;so the answer is 12", 0.5),   # one of two segments in words
    ("17+4=21;21-9=12;ok;", 2 / 3),         # empty segments do not count, 'ok' does
    ("twelve", 0.0),
    (" ; ", 0.0),                           # no segment at all
    ("17 + 4 = 21", 0.0),                   # the task's notation has no spaces
    ("17*4=68", 0.0),                       # nor multiplication
    ("=21;4+=5", 0.0),
])
def test_notation_consistency_is_the_fraction_of_segments_in_notation(thought, expected):
    assert notation_consistency(thought) == pytest.approx(expected)


def test_notation_consistency_does_not_check_the_arithmetic():
    assert notation_consistency("2+2=5") == 1.0


def test_the_reward_scores_thoughts_and_leaves_thoughtless_completions_out():
    completions = ["<think>1+2=3;3-1=2</think><answer>2</answer>", "<think>1+2=3;hmm</think><answer>2</answer>",
                   "<answer>def f(a):return a</answer>"]
    assert notation_consistency_reward(["Q"] * 3, completions, answer=["2", "2", ""]) == [1.0, 0.5, None]


def test_step_counts_tell_repeats_from_revisions():
    assert step_counts("1+2=3;3+4=7") == StepCounts(2, 0, 0)
    assert step_counts("1+2=3;1+2=3;3+4=7") == StepCounts(3, 1, 0)  # re-checked a step
    assert step_counts("1+2=4;1+2=3;3+4=7") == StepCounts(3, 0, 1)  # went back and changed it
    assert step_counts("1+2=4;1+2=3;1+2=3;no") == StepCounts(3, 1, 1)  # segments without '=' are not steps
    assert step_counts("3-3=0;0+3=3;3-3=0") == StepCounts(3, 0, 0)  # the problem repeats an operation: a chain step
    assert step_counts("2-0=2;2-0=2") == StepCounts(2, 0, 0)  # continues the chain (2 is the last result)


def test_marker_rates_over_a_batch():
    counter = MarkerCounter()
    completions = [
        "<think>5+3=8. Wait, let me check: 8-3=5</think><answer>8</answer>",   # verify (wait, check) + backtrack (wait)
        "<think>5+3=9. Actually 5+3=8</think><answer>8</answer>",              # backtrack only
        "<think>5+3=8</think><answer>8</answer>",                              # neither
        "<answer>8</answer>",                                                  # no thought: no marker, bad format
    ]
    m = counter.metrics(completions)
    assert m["verify_rate"] == 0.25
    assert m["backtrack_rate"] == 0.5
    assert m["format_rate"] == 0.75
    assert m["response_chars"] == sum(map(len, completions)) / 4
    assert m["think_chars"] == (len("5+3=8. Wait, let me check: 8-3=5") + len("5+3=9. Actually 5+3=8") + 5) / 4


def test_markers_are_configurable_case_insensitive_and_counted_once_per_completion():
    counter = MarkerCounter(verify_patterns=[r"\bcheck\b"], backtrack_patterns=[r"undo"])
    m = counter.metrics(["<think>CHECK check check</think><answer>1</answer>", "<think>undo; wait</think><answer>1</answer>"])
    assert m["verify_rate"] == 0.5 and m["backtrack_rate"] == 0.5
    assert counter.has_verify("Check") and not counter.has_verify("checked")  # whole words, as written


def test_notation_markers_in_the_metrics():
    m = MarkerCounter().metrics(["<think>1+2=3;1+2=3</think><answer>3</answer>",
                                 "<think>1+2=4;1+2=3</think><answer>3</answer>",
                                 "<think>1+2=3</think><answer>3</answer>"])
    assert m["repeat_step_rate"] == pytest.approx(1 / 3)
    assert m["revise_step_rate"] == pytest.approx(1 / 3)
    assert m["think_steps"] == pytest.approx(5 / 3)
