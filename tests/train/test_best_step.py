"""The validation set and the best-step bookkeeping of `rl` `val_n` / `keep_best` (train/selection.py)."""

from __future__ import annotations

import pytest
import torch

from reasonloop.config import ConfigError
from reasonloop.data.records import Example
from reasonloop.train.selection import BestWeights, selection_terms, selection_value, validation_set


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
    assert selection_terms(" maj@4 + pass@1 ", 4) == ["maj@4", "pass@1"]
    assert selection_terms("pass@1_greedy", 0) == ["pass@1_greedy"]
    with pytest.raises(ConfigError, match="'pass@8' is not a validation metric"):
        selection_terms("pass@1_greedy+pass@8", 4)
    with pytest.raises(ConfigError, match="with eval_k=0 they are pass@1_greedy"):
        selection_terms("pass@1", 0)


def test_selection_value_sums_the_overall_row():
    summary = {"overall": {"n": 10, "pass@1_greedy": 0.5, "pass@4": 0.75}, "level/1": {"pass@4": 9.0}}
    assert selection_value(summary, ["pass@1_greedy", "pass@4"]) == pytest.approx(1.25)


def test_best_weights_keep_the_earliest_best_step_and_restore_it_exactly():
    model = torch.nn.Linear(3, 2)
    best = BestWeights()
    assert best.offer(0, 0.5, model)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not best.offer(1, 0.5, model)  # a tie: the earlier step stays
    assert not best.offer(2, 0.4, model)
    assert best.step == 0
    best.restore(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, kept[k], atol=0, rtol=0)
    with torch.no_grad():
        model.bias.sub_(2.0)
    assert best.offer(3, 0.6, model) and best.step == 3


def test_best_weights_round_trip_through_their_state_dict_and_own_their_copy():
    model = torch.nn.Linear(2, 2)
    best = BestWeights()
    best.offer(4, 1.5, model)
    with torch.no_grad():
        model.weight.mul_(3.0)  # the kept copy is not a view of the live weights
    again = BestWeights()
    again.load_state_dict(best.state_dict())
    assert (again.step, again.value) == (4, 1.5)
    assert not torch.equal(again.weights["weight"], model.weight)
