import pytest

from reasonloop.data.records import Example
from reasonloop.tasks import TaskError, make_task
from reasonloop.tasks.arithmetic import (
    LEVELS,
    ArithmeticTask,
    Problem,
    format_completion,
    parse_levels,
    parse_number,
    split_of,
)
from reasonloop.rewards.core import RewardSpec, compute_rewards


def test_generation_is_deterministic_in_seed():
    task = ArithmeticTask()
    assert task.examples("train", 50, seed=3) == task.examples("train", 50, seed=3)
    assert task.examples("train", 50, seed=3) != task.examples("train", 50, seed=4)


def test_splits_never_share_a_problem_whatever_the_seeds():
    task = ArithmeticTask()
    train = {ex.id for seed in range(3) for ex in task.examples("train", 2000, seed=seed)}
    test = {ex.id for seed in range(3) for ex in task.examples("test", 500, seed=seed)}
    assert train and test and not train & test
    assert all(split_of(t) == "test" for t in test)


def test_examples_are_distinct_and_spread_over_levels():
    exs = ArithmeticTask().examples("test", 100)
    assert len({e.id for e in exs}) == 100
    assert {e.meta["level"] for e in exs} == set(LEVELS)


def test_small_levels_run_out_gracefully():
    exs = ArithmeticTask((1,)).examples("test", 10_000)
    assert 10 < len(exs) < 100 and len({e.id for e in exs}) == len(exs)


def test_levels_shape_the_problems():
    for level, (n_ops, hi) in LEVELS.items():
        for p in ArithmeticTask((level,)).problems("train", 30):
            assert len(p.ops) == n_ops and max(p.operands) <= hi
            assert min(p.running_values()) >= 0


def test_traces():
    p = Problem((17, 4, 9), ("+", "-"), 2)
    assert p.answer == 12
    assert p.trace(careful=True) == "17+4=21;21-9=12"
    assert p.trace(careful=False) == "17+4-9=12"
    assert format_completion(p) == "<think>17+4=21;21-9=12</think><answer>12</answer>"


@pytest.mark.parametrize("text,value", [
    ("12", 12), (" 12 ", 12), ("+12", 12), ("1,200", 1200), ("12.0", 12), ("-3", -3),
    ("12.5", None), ("twelve", None), ("", None), ("1 2", 12), ("12a", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


EX = Example("Q: 17+4-9=?\n", "12", {"level": 2})


@pytest.mark.parametrize("completion,ok", [
    ("<think>17+4=21;21-9=12</think><answer>12</answer>", True),
    ("<think>x</think><answer> 12 </answer>", True),
    ("<think>17+4=21;21-9=12</think><answer>13</answer>", False),
    ("<think></think><answer>12</answer>", False),  # empty think block earns nothing
    ("<answer>12</answer>", False),  # no reasoning block
    ("<think>a</think><answer>12</answer><answer>12</answer>", False),  # answer spam
    ("<think>a</think><answer>11 12 13</answer>", False),  # listing numbers
    ("12", False),
    ("<think>a</think><answer>12</answer> and more", False),  # trailing junk
])
def test_verifier_edge_cases(completion, ok):
    assert ArithmeticTask().is_correct(completion, EX) is ok


def test_rewards_report_each_component():
    task = ArithmeticTask(max_completion_chars=40)
    comps = ["<think>17+4=21;21-9=12</think><answer>12</answer>", "<think>a</think><answer>3</answer>",
             "junk" * 30]
    result = compute_rewards(task.rewards(), comps, [EX] * 3)
    assert result.components["accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert result.components["format"].tolist() == [1.0, 1.0, 0.0]
    assert result.components["length"][2] == -1.0 and result.components["length"][1] == 0.0
    assert result.total.tolist() == pytest.approx([1.1 + float(result.components["length"][0]), 0.1, -1.0])


def test_bad_reward_functions_are_counted_not_fatal():
    def raises(prompts, completions, **_):
        raise RuntimeError("boom")

    def nan(prompts, completions, **_):
        return [float("nan")] + [1.0] * (len(completions) - 1)

    def short(prompts, completions, **_):
        return [1.0]

    specs = [RewardSpec("raises", raises), RewardSpec("nan", nan), RewardSpec("short", short)]
    for spec in specs:  # past the first batch, which must not fail whole (test_inputs.py checks that rule)
        spec.health.batches = 1
    result = compute_rewards(specs, ["a", "b"], [EX, EX])
    assert result.errors == {"raises": 2, "nan": 1, "short": 2}
    assert result.total.tolist() == [0.0, 1.0]


def test_registry_and_level_spec():
    assert parse_levels("2-3") == (2, 3) and parse_levels("1,4") == (1, 4)
    assert make_task("arithmetic:2-3").levels == (2, 3)
    with pytest.raises(TaskError, match="did you mean 'arithmetic'"):
        make_task("arithmetc")


def test_answer_key_normalises_for_voting():
    task = ArithmeticTask()
    assert task.answer_key("<think>a</think><answer> 1,2 </answer>") == 12
    assert task.answer_key("no answer") is None
