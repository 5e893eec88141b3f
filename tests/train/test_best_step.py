"""The validation set and the best-step bookkeeping of `rl` `val_n` / `keep_best` (train/selection.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonloop.config import ConfigError
from reasonloop.data.records import Example
from reasonloop.train.selection import BestWeights, problem_values, selection_terms, validation_set


def ex(prompt: str) -> Example:
    return Example(prompt, "0", {})


def test_the_validation_set_is_distinct_and_holds_no_held_out_problem():
    held_out = [ex(p) for p in "abc"]
    validation = validation_set(held_out, [ex(p) for p in "dbaddezfg"], 3)
    assert [e.prompt for e in validation] == ["d", "e", "z"]
    assert [e.prompt for e in validation_set(held_out, [ex("d"), ex("a")], 5)] == ["d"]  # fewer when it runs out


def test_a_test_split_with_nothing_beside_the_held_out_problems_is_a_config_error():
    with pytest.raises(ConfigError, match="no problem left beside the 2 held-out ones"):
        validation_set([ex("a"), ex("b")], [ex("b"), ex("a"), ex("a")], 4)


def test_selection_terms_are_the_metrics_an_evaluation_with_k_samples_reports():
    assert selection_terms("pass@1_greedy+pass@8", 8) == ["pass@1_greedy", "pass@8"]
    assert selection_terms(" pass@4 + pass@1 ", 4) == ["pass@4", "pass@1"]
    assert selection_terms("pass@1_greedy", 0) == ["pass@1_greedy"]
    with pytest.raises(ConfigError, match="'pass@8' is not a validation metric"):
        selection_terms("pass@1_greedy+pass@8", 4)
    with pytest.raises(ConfigError, match="with eval_k=0 they are pass@1_greedy"):
        selection_terms("pass@1", 0)
    with pytest.raises(ConfigError, match="'maj@4' is not"):  # not a per-problem value
        selection_terms("maj@4", 4)


def rows(problem: str, greedy: int, sampled: list[int]) -> list[dict]:
    return ([{"id": problem, "prompt": problem, "mode": "greedy", "correct": greedy}]
            + [{"id": problem, "prompt": problem, "mode": "sampled", "correct": c} for c in sampled])


def test_problem_values_sum_the_terms_per_problem_and_average_to_the_table():
    evaluation = rows("b", 1, [0, 0, 1, 0]) + rows("a", 0, [0, 0, 0, 0]) + rows("c", 1, [1, 1, 1, 1])
    values = problem_values(evaluation, ["pass@1_greedy", "pass@4"], 4)
    assert values.tolist() == [0.0, 2.0, 2.0]  # problems in sorted order: a, b, c
    assert problem_values(evaluation, ["pass@1"], 4).tolist() == [0.0, 0.25, 1.0]
    assert values.mean() == pytest.approx(2 / 3 + 2 / 3)  # greedy 2/3 + pass@4 2/3


def test_best_weights_keep_the_earliest_best_step_and_restore_it_exactly():
    model = torch.nn.Linear(3, 2)
    best = BestWeights()
    assert best.offer(0, np.full(4, 0.5), model)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not best.offer(1, np.array([1.0, 1.0, 0.0, 0.0]), model)  # a tie: the earlier step stays
    assert not best.offer(2, np.full(4, 0.4), model)
    assert best.step == 0 and best.value == 0.5
    best.restore(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, kept[k], atol=0, rtol=0)
    with torch.no_grad():
        model.bias.sub_(2.0)
    assert best.offer(3, np.full(4, 0.6), model) and best.step == 3


def test_the_best_step_beats_another_only_beyond_the_validation_sets_noise():
    best = BestWeights()
    best.offer(1, np.array([1.0] * 20 + [0.0] * 20), torch.nn.Linear(1, 1))
    assert best.beats(np.zeros(40))[0]  # 20 problems better, none worse
    one_better = np.array([0.0] + [1.0] * 19 + [0.0] * 20)
    better, (lo, hi) = best.beats(one_better)  # one problem of 40: the interval holds 0
    assert not better and lo <= 0 < hi
    assert not best.beats(np.array([1.0] * 20 + [0.0] * 20))[0]  # equal


def test_best_weights_round_trip_through_their_state_dict_and_own_their_copy():
    model = torch.nn.Linear(2, 2)
    best = BestWeights()
    best.offer(4, np.array([1.0, 2.0]), model)
    with torch.no_grad():
        model.weight.mul_(3.0)  # the kept copy is not a view of the live weights
    again = BestWeights()
    again.load_state_dict(best.state_dict())
    assert (again.step, again.value, again.values.tolist()) == (4, 1.5, [1.0, 2.0])
    assert not torch.equal(again.weights["weight"], model.weight)
