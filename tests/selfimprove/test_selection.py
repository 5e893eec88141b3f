"""Selection rules on small synthetic score tables (hand-checked expectations)."""

import pytest

from reasonloop.selfimprove.selection import (
    Sample,
    above_threshold,
    best_worst_pairs,
    correct_incorrect_pairs,
    correct_only,
    dedup,
    rising_thresholds,
    top_k_per_prompt,
    with_reward,
)


def table(rows):
    """rows: (group, completion, reward, correct)"""
    return [Sample(f"Q{g}", c, r, ok, g) for g, c, r, ok in rows]


SCORES = table([
    ("a", "a1", 1.1, True), ("a", "a2", 0.1, False), ("a", "a3", 1.0, True), ("a", "a4", -0.5, False),
    ("b", "b1", 0.0, False), ("b", "b2", 0.1, False),
    ("c", "c1", 1.1, True), ("c", "c2", 1.1, True),
])


def names(samples):
    return [s.completion for s in samples]


def test_threshold_keeps_at_or_above_in_order():
    assert names(above_threshold(SCORES, 1.0)) == ["a1", "a3", "c1", "c2"]
    assert names(above_threshold(SCORES, 1.05)) == ["a1", "c1", "c2"]
    assert names(above_threshold(SCORES, 5.0)) == []


def test_correct_only():
    assert names(correct_only(SCORES)) == ["a1", "a3", "c1", "c2"]


def test_top_k_per_prompt():
    assert names(top_k_per_prompt(SCORES, 1)) == ["a1", "b2", "c1"]  # c: tie -> the earlier one
    assert names(top_k_per_prompt(SCORES, 2)) == ["a1", "a3", "b1", "b2", "c1", "c2"]  # input order kept
    assert names(top_k_per_prompt(SCORES, 1, min_reward=1.0)) == ["a1", "c1"]  # b has nothing >= 1
    with pytest.raises(ValueError):
        top_k_per_prompt(SCORES, 0)


def test_dedup_normalises_whitespace_and_keeps_first():
    samples = table([("a", "x y", 1.0, True), ("a", " x  y ", 0.5, True), ("b", "x y", 1.0, True), ("a", "x z", 1.0, True)])
    kept, dropped = dedup(samples)
    assert dropped == 1
    assert [(s.group, s.completion, s.reward) for s in kept] == [("a", "x y", 1.0), ("b", "x y", 1.0), ("a", "x z", 1.0)]


def test_rising_thresholds():
    assert rising_thresholds(0.0, 1.0, 3) == [0.0, 0.5, 1.0]
    assert rising_thresholds(0.7, 0.7, 2) == [0.7, 0.7]
    assert rising_thresholds(0.2, 0.9, 1) == [0.2]
    with pytest.raises(ValueError):
        rising_thresholds(1.0, 0.5, 3)


def test_rising_threshold_schedule_shrinks_the_kept_set():
    kept = [len(above_threshold(SCORES, t)) for t in rising_thresholds(0.0, 1.1, 3)]
    assert kept == [7, 4, 3]  # >= 0.0, >= 0.55, >= 1.1
    assert kept == sorted(kept, reverse=True)


def test_best_worst_pairs():
    pairs = best_worst_pairs(SCORES)
    assert [(c.completion, r.completion) for c, r in pairs] == [("a1", "a4"), ("b2", "b1")]  # c: all equal
    assert [(c.completion, r.completion) for c, r in best_worst_pairs(SCORES, min_gap=0.5)] == [("a1", "a4")]
    two = best_worst_pairs(SCORES, max_pairs_per_prompt=2)
    assert [(c.completion, r.completion) for c, r in two] == [("a1", "a4"), ("a3", "a2"), ("b2", "b1")]


def test_best_worst_pairs_skip_identical_texts():
    same = table([("a", "x", 1.0, True), ("a", " x", 0.0, False)])
    assert best_worst_pairs(same) == []


def test_correct_incorrect_pairs_round_robin_and_cap():
    pairs = correct_incorrect_pairs(SCORES, max_pairs_per_prompt=3)
    assert [(c.completion, r.completion) for c, r in pairs] == [("a1", "a2"), ("a3", "a4"), ("a3", "a2")]
    assert correct_incorrect_pairs(SCORES, max_pairs_per_prompt=10)[3:] == [(SCORES[0], SCORES[3])]


def test_with_reward_rescores():
    out = with_reward(SCORES[:2], [0.3, 0.4])
    assert [s.reward for s in out] == [0.3, 0.4] and out[0].completion == "a1"
    with pytest.raises(ValueError):
        with_reward(SCORES[:2], [0.3])
