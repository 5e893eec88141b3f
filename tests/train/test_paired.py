"""Problem-by-problem comparison of two evaluations with paired-bootstrap intervals (train/paired.py)."""

from __future__ import annotations

import pytest

from reasonloop.train.paired import format_differences, paired_differences, per_problem


def rows(pid: str, greedy: bool, sampled: list[bool]) -> list[dict]:
    return ([{"id": pid, "prompt": f"Q {pid}", "mode": "greedy", "correct": greedy}]
            + [{"id": pid, "prompt": f"Q {pid}", "mode": "sampled", "correct": c} for c in sampled])


def test_per_problem_counts_the_greedy_verdict_and_the_right_samples():
    got = per_problem(rows("a", True, [True, False, True]) + rows("b", False, [False, False, False]))
    assert got == {"a\nQ a": {"greedy": 1, "correct": 2, "samples": 3},
                   "b\nQ b": {"greedy": 0, "correct": 0, "samples": 3}}


def test_identical_evaluations_differ_by_exactly_zero():
    evaluation = per_problem(sum((rows(str(i), i % 2 == 0, [i % 3 == 0, True]) for i in range(40)), []))
    diffs = paired_differences(evaluation, evaluation)
    assert [d.metric for d in diffs] == ["pass@1_greedy", "pass@1", "pass@2"]
    assert all(d.delta == 0 and d.lo == 0 and d.hi == 0 and d.n == 40 for d in diffs)


def test_the_difference_is_the_mean_over_shared_problems_and_the_interval_brackets_it():
    base = per_problem(sum((rows(str(i), False, [False, False, False, False]) for i in range(100)), []))
    # the other model solves 30 of the 100 greedily and holds one right sample in four on those
    other = per_problem(sum((rows(str(i), i < 30, [i < 30, False, False, False]) for i in range(100)), [])
                        + rows("only-here", True, [True] * 4))
    by_metric = {d.metric: d for d in paired_differences(base, other, resamples=4000)}
    greedy = by_metric["pass@1_greedy"]
    assert greedy.n == 100 and greedy.baseline == 0 and greedy.other == pytest.approx(0.30)
    assert greedy.lo < 0.30 < greedy.hi and greedy.lo > 0.18 and greedy.hi < 0.42  # binomial sd ~0.046
    assert by_metric["pass@1"].delta == pytest.approx(0.30 / 4)
    assert by_metric["pass@4"].delta == pytest.approx(0.30)  # one right sample of four: pass@4 = 1
    assert "+0.300" in format_differences(list(by_metric.values()))


def test_k_is_the_fewer_samples_of_the_two_sides_and_a_missing_side_drops_its_metrics():
    base = per_problem(rows("a", True, [True, False]))
    other = per_problem(rows("a", True, [True, False, False, False]))
    assert [d.metric for d in paired_differences(base, other)] == ["pass@1_greedy", "pass@1", "pass@2"]
    sampled_only = per_problem([r for r in rows("a", True, [True, True]) if r["mode"] == "sampled"])
    assert [d.metric for d in paired_differences(sampled_only, base)] == ["pass@1", "pass@2"]
    assert paired_differences(base, per_problem(rows("z", True, [True]))) == []
