"""AUC and first-error accuracy by hand; the arithmetic task's traces with a known first wrong step."""

from __future__ import annotations

import math
import re

import pytest

from reasonloop.prm.labels import StepExample
from reasonloop.prm.metrics import evaluate, first_error_accuracy, first_flagged, roc_auc
from reasonloop.rewards.process import step_spans
from reasonloop.tasks.arithmetic import ArithmeticTask, ErrorTrace, Problem, first_error_traces


def test_roc_auc_by_hand():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75  # 3 of 4 (pos, neg) pairs ordered
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [True, False, False, True]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)  # tie: 1/2
    assert roc_auc([0.9, 0.1], [False, True]) == 0.0
    assert math.isnan(roc_auc([0.3, 0.4], [True, True]))
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        roc_auc([0.1, 0.2], [True])


def test_first_error_accuracy_by_hand():
    assert first_flagged([0.9, 0.6, 0.4, 0.1]) == 2 and first_flagged([0.9, 0.5]) is None
    scores = [[0.9, 0.2, 0.1], [0.3, 0.2, 0.1], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9], [0.9, 0.4, 0.9]]
    got = first_error_accuracy(scores, [1, 1, 2, None, None])
    # error traces: hit, early, missed -> 1/3; correct traces: clean, false alarm -> 1/2
    assert got == {"first_error_acc": pytest.approx(1 / 3), "correct_trace_acc": 0.5, "error_traces": 3,
                   "correct_traces": 2}


def test_corrupted_trace_is_wrong_first_at_its_step_and_consistent_after():
    p = Problem((17, 4, 9, 3), ("+", "-", "+"), level=3)
    assert p.corrupted_completion(1, 2) == "<think>17+4=21;21-9=14;14+3=17</think><answer>17</answer>"
    assert p.corrupted_completion(0, -1) == "<think>17+4=20;20-9=11;11+3=14</think><answer>14</answer>"
    steps = [s.text for s in step_spans(p.corrupted_completion(2, 1))]
    assert steps == ["<think>17+4=21;", "21-9=12;", "12+3=16</think>", "<answer>16</answer>"]
    with pytest.raises(ValueError, match="out of range"):
        p.corrupted_completion(3, 1)
    with pytest.raises(ValueError, match="non-zero"):
        p.corrupted_completion(0, 0)


STEP_RE = re.compile(r"(?:<think>)?(\d+)([+-])(\d+)=(-?\d+)(?:;|</think>)")


def test_first_error_traces_know_their_first_wrong_step():
    task = ArithmeticTask()
    problems = task.problems("test", 40, seed=3)
    traces = first_error_traces(problems, seed=3)
    assert traces == task.first_error_traces("test", 40, seed=3) and len(traces) == 80
    examples = task.examples("test", 40, seed=3)
    for p, ex, good, bad in zip(problems, examples, traces[::2], traces[1::2]):
        assert good.first_error is None and task.is_correct(good.completion, ex)
        assert bad.first_error is not None and bad.prompt == good.prompt == ex.prompt
        assert not task.is_correct(bad.completion, ex)
        *ops, answer = [s.text for s in step_spans(bad.completion)]
        parsed = [STEP_RE.fullmatch(s).groups() for s in ops]
        right = [(int(a) + int(b) if op == "+" else int(a) - int(b)) == int(v) for a, op, b, v in parsed]
        assert len(ops) == len(p.ops) and right.index(False) == bad.first_error and all(right[bad.first_error + 1 :])
        assert all(parsed[i + 1][0] == parsed[i][3] for i in range(len(ops) - 1))  # each step starts from the last value
        assert answer == f"<answer>{parsed[-1][3]}</answer>" and all(int(v) >= 0 for *_, v in parsed)
    assert {t.first_error for t in traces[1::2]} == {0, 1, 2, 3}  # every position of level-4 traces occurs


class FixedScorer:
    """Scores step k of every row with table[prompt][k]."""

    def __init__(self, table):
        self.table = table

    def score_many(self, prompts, steps):
        return [self.table[p][: len(s)] for p, s in zip(prompts, steps)]

    def split(self, completion):
        return [s.text for s in step_spans(completion)]


def test_evaluate_on_a_fixed_scorer():
    held_out = [StepExample("a", ["x;", "y"], [True, False], [1.0, 0.0], False),
                StepExample("b", ["x;", "y"], [True, True], [1.0, 1.0], True)]
    traces = [ErrorTrace("c", "<think>1+1=2;2+1=3</think><answer>3</answer>", None),
              ErrorTrace("d", "<think>1+1=3;3+1=4</think><answer>4</answer>", 0)]
    scorer = FixedScorer({"a": [0.9, 0.2], "b": [0.6, 0.7], "c": [0.9, 0.8, 0.7], "d": [0.4, 0.3, 0.2]})
    got = evaluate(scorer, held_out, traces)
    assert got["step_auc"] == pytest.approx(3 / 3) and got["outcome_auc"] == 1.0
    assert got["step_acc"] == 1.0 and got["held_out_steps"] == 4 and got["held_out_positive_frac"] == 0.75
    assert got["first_error_acc"] == 1.0 and got["correct_trace_acc"] == 1.0
    only_good = [StepExample("b", ["x;", "y"], [True, True], [1.0, 1.0], True)]
    assert evaluate(scorer, only_good)["step_auc"] is None  # one class: no AUC (None in summary.json, not NaN)
