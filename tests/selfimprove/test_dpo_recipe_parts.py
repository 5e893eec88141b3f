"""Recipe-level parts of `recipes/dpo.py` that need no model: pair building, KTO split, loss kwargs, config checks."""

import pytest

from reasonloop.config import ConfigError, load_config
from reasonloop.recipes.dpo import Config, online_data
from reasonloop.selfimprove.selection import Sample


def s(group, text, reward, correct):
    return Sample(f"Q{group}\n", text, reward, correct, group)


SAMPLES = [s("a", "good", 1.1, True), s("a", "bad", 0.1, False), s("b", "x", 0.9, False), s("b", "y", 0.2, True),
           s("c", "same1", 0.0, False), s("c", "same2", 0.0, False)]


def test_online_pairs_and_judge_accuracy():
    data, stats = online_data(Config(), SAMPLES, render=lambda p: "<" + p)
    assert data.chosen == ["good", "x"] and data.rejected == ["bad", "y"]
    assert data.prompts == ["<Qa\n", "<Qb\n"]  # rendered
    # pair a: judge right; pair b: judge preferred the wrong one; c: tie, no pair
    assert stats == {"pairs": 2, "judge_pair_accuracy": 0.5}


def test_online_kto_is_unpaired_by_threshold():
    data, stats = online_data(Config(loss="kto", kto_threshold=0.5), SAMPLES, render=lambda p: p)
    assert data.chosen == ["good", "x"] and data.rejected == ["bad", "y", "same1", "same2"]
    assert data.rejected_prompts == ["Qa\n", "Qb\n", "Qc\n", "Qc\n"]
    assert stats == {"desirable": 2, "undesirable": 4}


def test_loss_kwargs_follow_each_family():
    assert Config(loss="dpo", beta=0.2).loss_kwargs() == {"beta": 0.2}
    assert Config(loss="cdpo", label_smoothing=0.2).loss_kwargs() == {"beta": 0.1, "label_smoothing": 0.2}
    assert Config(loss="orpo", orpo_lambda=0.3).loss_kwargs() == {"lam": 0.3}
    assert Config(loss="simpo", beta=2.0, simpo_gamma=1.0).loss_kwargs() == {"beta": 2.0, "gamma": 1.0}
    assert Config(loss="kto", kto_kl_ref=0.5).loss_kwargs() == {"beta": 0.1, "kl_ref": 0.5}


def test_config_rejects_unknown_loss_and_judge():
    with pytest.raises(ConfigError):
        load_config(Config, ["loss=dpoo"])
    with pytest.raises(ConfigError):
        load_config(Config, ["judge=oracle"])
    assert load_config(Config, ["mode=self_rewarding"]).judge_kind == "self"
