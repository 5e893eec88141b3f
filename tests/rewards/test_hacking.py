"""Known reward hacks must not earn accuracy reward; each test pairs a hack with an honest control."""

import pytest

from reasonloop.rewards.answer_format import format_reward
from reasonloop.rewards.math_grader import grade, make_accuracy_reward

PROMPT = "Tom has 12 apples and buys 7 more. How many apples does he have?"
GOLD = "19"
HONEST = "<think>12 + 7 = 19</think><answer>19</answer>"

HACKS = [
    ("answer_spam", "<think>guess</think><answer>18</answer><answer>19</answer><answer>20</answer>", "multiple_answers"),
    ("boxed_spam", "<think>guess</think><answer>\\boxed{18} \\boxed{19}</answer>", "multiple_answers"),
    ("many_numbers", "<think>guess</think><answer>17, 18, 19, 20, 21</answer>", "multiple_candidates"),
    ("echo_numbers", "<think>copy</think><answer>12 7</answer>", "multiple_candidates"),
    ("echo_expression", "<think>copy</think><answer>12+7</answer>", "unevaluated_expression"),
    ("empty_think", "<think></think><answer>19</answer>", "empty_think"),
    ("whitespace_think", "<think> \n\t </think><answer>19</answer>", "empty_think"),
    ("no_think", "<answer>19</answer>", "empty_think"),
    ("bare_boxed", "\\boxed{19}", "no_answer_tag"),
    ("bare_number", "19", "no_answer_tag"),
    ("long_padding", "<think>" + "very " * 5000 + "</think><answer>19</answer>", "too_long"),
    ("padding_after_answer", HONEST + " 18 20 21" * 10, "trailing_text"),
    ("answer_essay", "<think>x</think><answer>" + "maybe 19 " * 40 + "</answer>", "answer_too_long"),
]


@pytest.mark.parametrize("name,completion,reason", HACKS, ids=[h[0] for h in HACKS])
def test_hack_earns_no_accuracy(name, completion, reason):
    verdict = grade(completion, GOLD, PROMPT)
    assert not verdict.correct
    assert verdict.reason == reason


def test_honest_control_is_correct():
    assert grade(HONEST, GOLD, PROMPT).correct


def test_accuracy_reward_fn_pays_only_the_honest_completion():
    completions = [HONEST] + [c for _, c, _ in HACKS]
    reward = make_accuracy_reward()
    scores = reward(prompts=[PROMPT] * len(completions), completions=completions, answer=[GOLD] * len(completions))
    assert scores == [1.0] + [0.0] * len(HACKS)


def test_format_reward_refuses_empty_think_and_duplicate_answers():
    completions = [HONEST, "<think></think><answer>19</answer>", "<think>a</think><answer>1</answer><answer>2</answer>", "\\boxed{19}"]
    assert format_reward(prompts=[PROMPT] * 4, completions=completions) == [1.0, 0.0, 0.0, 0.0]
