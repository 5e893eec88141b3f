"""Hygiene (dedup, length filter, overlap) and augmentation (substitution, counterfactuals)."""

import random

import pytest

from reasonloop.data.records import Example
from reasonloop.tasks.augment import (
    augment,
    counterfactual,
    eval_arithmetic,
    solve_expression,
    substitute_numbers,
    templatize,
)
from reasonloop.tasks.hygiene import decontaminate, dedup, in_test_split, length_filter, overlap
from reasonloop.rewards.math_grader import grade

LONG = "A train leaves the station at noon travelling at sixty miles per hour towards a city that is three hundred miles away"


def ex(prompt: str, answer: str = "0") -> Example:
    return Example(prompt=prompt, answer=answer, meta={"id": prompt})


def test_dedup_ignores_case_spacing_and_punctuation():
    kept = dedup([ex("What is 2+2?"), ex("what is 2 + 2"), ex("What is 2+3?")])
    assert [e.prompt for e in kept] == ["What is 2+2?", "What is 2+3?"]


def test_length_filter_with_custom_length():
    items = [ex("a b"), ex("a b c d e"), ex("a")]
    assert [e.prompt for e in length_filter(items, min_len=2, max_len=3, length=lambda s: len(s.split()))] == ["a b"]


def test_overlap_finds_exact_and_ngram_leaks_and_decontaminate_removes_them():
    evaluation = [ex(LONG + ". When does it arrive?")]
    train = [ex(LONG.upper() + "... when does it arrive"), ex("Prefix words. " + LONG + " and more."), ex("Unrelated problem about apples.")]
    report = overlap(train, evaluation, n=13)
    assert report.exact == [0] and report.ngram == [0, 1]
    assert report.contaminated_fraction == pytest.approx(2 / 3)
    assert [e.prompt for e in decontaminate(train, evaluation)] == ["Unrelated problem about apples."]


def test_hash_split_is_stable_and_near_the_requested_fraction():
    prompts = [f"problem {i}" for i in range(2000)]
    share = sum(in_test_split(p, 0.1) for p in prompts) / len(prompts)
    assert 0.08 < share < 0.12
    assert in_test_split("problem 7", 0.1) == in_test_split("Problem 7!", 0.1)


def test_templatize_round_trips_and_escapes_braces():
    t = templatize("Set {x}: add 12 and -7, then 3.5.")
    assert t.numbers == (12, -7)
    assert t.fill(t.numbers) == "Set {x}: add 12 and -7, then 3.5."


def test_eval_arithmetic_is_exact_and_refuses_code():
    assert eval_arithmetic("(56 + -33) - 84 * 2 / 4") == -19
    with pytest.raises(ValueError):
        eval_arithmetic("__import__('os')")


def test_substitution_recomputes_a_correct_answer():
    original = ex("What is 12 + 7 * 3?", "33")
    variants = augment([original], solve_expression, copies=20, seed=0)
    assert len(variants) == 20
    for v in variants:
        a, b, c = templatize(v.prompt).numbers
        assert int(v.answer) == a + b * c and len(str(a)) == 2 and len(str(c)) == 1
        assert v.meta["augmented_from"] == original.id
    assert augment([original], solve_expression, copies=3, seed=5) == augment([original], solve_expression, copies=3, seed=5)


def test_counterfactual_makes_the_original_answer_wrong():
    original = ex("Compute 48 / 6 - 3.", "5")
    rng = random.Random(0)
    for _ in range(10):
        variant = counterfactual(original, solve_expression, rng)
        assert variant.answer != original.answer
        stale = f"<think>memorised</think><answer>{original.answer}</answer>"
        assert not grade(stale, variant.answer).correct
        assert grade(f"<think>solved</think><answer>{variant.answer}</answer>", variant.answer).correct


def test_no_solver_answer_means_no_variant():
    assert substitute_numbers(ex("Name a prime above 10."), lambda p, n: None, random.Random(0)) is None
    assert substitute_numbers(ex("No numbers here."), solve_expression, random.Random(0)) is None
