"""task=mix:A+B: interleaved examples, renumbered levels, each row scored by its own task."""

from __future__ import annotations

import pytest

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec, compute_rewards
from reasonloop.tasks import TaskError, make_task
from reasonloop.tasks import mixture


def test_examples_interleave_and_levels_are_renumbered_per_task():
    mix = make_task("mix:arithmetic:1+arithmetic:3")
    exs = mix.examples("test", 5)
    assert [(e.meta["task"], e.meta["level"]) for e in exs] == [(0, 1), (1, 13), (0, 1), (1, 13), (0, 1)]
    first = make_task("arithmetic:1").examples("test", 3)
    assert [e.prompt for e in exs[::2]] == [e.prompt for e in first]
    assert mix.levels == (1, 13)


def test_each_row_is_scored_by_its_own_task_and_correct_becomes_accuracy(monkeypatch):
    class Coder:  # a code-like task: one component named 'correct', no thought, no format reward
        name, levels = "coder", (1,)

        def examples(self, split, n, seed=0):
            return [Example(f"Q: code {i}\n", f"ok{i}", {"level": 1}) for i in range(n)]

        def is_correct(self, completion, example):
            return completion == example.answer

        def rewards(self):
            return [RewardSpec("correct", lambda prompts, completions, answer, **_:
                               [float(c == a) for c, a in zip(completions, answer)])]

    real = mixture.make_component
    monkeypatch.setattr(mixture, "make_component", lambda spec, d=None: Coder() if spec == "coder" else real(spec, d))
    mix = make_task("mix:arithmetic:1+coder")
    exs = mix.examples("test", 4)
    arith = exs[0]
    right = f"<think>{arith.prompt[3:-3]}={arith.answer}</think><answer>{arith.answer}</answer>"
    completions = [right, "ok0", "<answer>nope</answer>", "bad"]
    scored = compute_rewards(mix.rewards(), completions, exs)
    assert [s.name for s in mix.rewards()] == ["accuracy", "format", "length"]
    assert [s.weight for s in mix.rewards()] == [1.0, 0.1, 1.0]  # shared weights stay the spec's
    assert scored.components["accuracy"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert scored.components["format"].tolist() == [1.0, 0.0, 0.0, 0.0]  # code rows: not applicable (None -> 0)
    assert scored.total.tolist() == pytest.approx([1.1, 1.0, 0.0, 0.0])
    assert [mix.is_correct(c, e) for c, e in zip(completions, exs)] == [True, True, False, False]
    assert mix.answer_key(right) == int(arith.answer) and mix.answer_key(" ok0 ") == "ok0"


def test_a_mixture_needs_two_tasks():
    with pytest.raises(TaskError, match="task=mix needs two or more tasks"):
        make_task("mix:arithmetic")
    with pytest.raises(TaskError, match="task=mix needs its tasks"):
        make_task("mix")
