"""task=mix:A+B (tasks/mixture.py): interleaved parts, offset levels and domains, each row graded by its own part."""

from __future__ import annotations

import pytest

from reasonloop.rewards.core import RewardSpec, compute_rewards
from reasonloop.tasks import TaskError, make_task
from reasonloop.tasks.arithmetic import ArithmeticTask
from reasonloop.tasks.mixture import MixtureTask
from toy_tasks import LetterFirstTask


def test_parts_interleave_with_offset_levels_and_their_domain():
    mix = make_task("mix:arithmetic:1-2+code_arith:1")
    exs = mix.examples("test", 5, seed=0)
    assert [ex.meta["domain"] for ex in exs] == ["arithmetic", "code_arith", "arithmetic", "code_arith", "arithmetic"]
    assert [ex.meta["level"] for ex in exs] == [1, 11, 2, 11, 1]
    assert exs[0].prompt == ArithmeticTask((1, 2)).examples("test", 3, seed=0)[0].prompt
    assert mix.embedded_model == "tiny-code" and mix.name == "mix:arithmetic+code_arith"


def test_each_row_is_graded_and_rewarded_by_its_own_part():
    mix = MixtureTask([("arithmetic", ArithmeticTask((1,))), ("letters", LetterFirstTask())])
    arith, letters = mix.examples("train", 2, seed=0)
    right = f"<think>{arith.meta['id']}={arith.answer}</think><answer>{arith.answer}</answer>"
    assert mix.is_correct(right, arith) and not mix.is_correct("<think>1</think><answer>-5</answer>", arith)
    assert mix.is_correct("abc", letters) and not mix.is_correct("1bc", letters)
    out = compute_rewards(mix.rewards(), [right, "abc"], [arith, letters])
    # arithmetic's components are accuracy, format (0.1) and length; the toy task has accuracy only
    assert {k: v.tolist() for k, v in out.components.items()} == {"accuracy": [1.0, 1.0], "format": [1.0, 0.0],
                                                                    "length": [0.0, 0.0]}
    assert out.total.tolist() == pytest.approx([1.1, 1.0])


class CodeLike(LetterFirstTask):
    """A part whose verdict component is called `correct`, as the code tasks' is."""

    def rewards(self):
        return [RewardSpec("correct", super().rewards()[0].fn, 1.0)]


def test_a_part_s_correct_verdict_is_the_accuracy_component():
    mix = MixtureTask([("arithmetic", ArithmeticTask((1,))), ("code", CodeLike())])
    assert [s.name for s in mix.rewards()] == ["accuracy", "format", "length"]
    arith, code = mix.examples("train", 2, seed=0)
    assert compute_rewards(mix.rewards(), ["x", "abc"], [arith, code]).components["accuracy"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("spec, message", [("mix", "needs its parts"), ("mix:arithmetic", "at least two parts"),
                                           ("mix:arithmetic+nope", "unknown task 'nope'")])
def test_bad_specs_are_task_errors(spec, message):
    with pytest.raises(TaskError, match=message):
        make_task(spec)
