"""The one parser of the `<think>...</think><answer>...</answer>` format, on hand-written completions."""

import pytest

from reasonloop.rewards.answer_format import (
    Parsed,
    answer_blocks,
    format_reward,
    is_lenient,
    last_answer,
    parse_strict,
    single_answer,
    strict_format_reward,
    think_blocks,
)

GOOD = "<think>17+4=21;21-9=12</think><answer>12</answer>"


@pytest.mark.parametrize("completion, strict, lenient", [
    (GOOD, True, True),
    (f"  {GOOD}\n", True, True),  # outer whitespace is stripped / allowed by both
    ("<think>x</think>\n<answer>12</answer>", False, True),  # whitespace between blocks: lenient only
    ("<think> </think><answer>12</answer>", True, False),  # a blank thought: strict takes any character
    ("<think>x</think><answer></answer>", False, False),  # empty answer
    ("<think>x</think><answer>1</answer><answer>2</answer>", False, False),  # two answers
    ("<answer>12</answer>", False, False),  # no thought
    ("<think>x</think><answer>1<b>2</answer>", False, True),  # markup inside the answer: strict refuses
    ("<think>x</think><answer>12</answer> trailing", False, False),
])
def test_strict_and_lenient_shapes(completion, strict, lenient):
    assert (parse_strict(completion) is not None) is strict
    assert is_lenient(completion) is lenient
    assert strict_format_reward([""], [completion]) == [float(strict)]
    assert format_reward([""], [completion]) == [float(lenient)]


def test_parse_strict_returns_both_blocks():
    assert parse_strict(GOOD) == Parsed("17+4=21;21-9=12", "12")


def test_block_accessors():
    two = "<think>a</think><answer>1</answer> and <think>b</think><answer>2</answer>"
    assert answer_blocks(two) == ["1", "2"] and think_blocks(two) == ["a", "b"]
    assert single_answer(two) is None and last_answer(two) == "2"
    assert single_answer(GOOD) == "12" == last_answer(GOOD)
    assert single_answer("no tags") is None and last_answer("no tags") is None
