"""`reasonloop r1_zero`: rule rewards only, the thought metrics in every step's row, the curves plot."""

from __future__ import annotations

import json

import pytest

from reasonloop.config import ConfigError, load_config
from reasonloop.recipes import r1_zero


def args(model_dir, out, *extra):
    return [f"model.name={model_dir}", f"output_dir={out}", "steps=2", "prompts_per_step=4", "group_size=4",
            "sampling.max_new_tokens=8", "eval_n=4", "eval_k=0", "eval_every=1", "save_every=0", "samples_every=0",
            "train_pool=16", "threads=1", *extra]


def test_trains_on_accuracy_and_format_only_and_logs_the_thought_metrics(nano_model_dir, tmp_path):
    trainer = r1_zero.Trainer(load_config(r1_zero.Config, args(nano_model_dir, tmp_path / "run")))
    assert [s.name for s in trainer.reward_specs] == ["accuracy", "format"]  # the length penalty is dropped
    result = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("r1/verify_rate", "r1/backtrack_rate", "r1/repeat_step_rate", "r1/revise_step_rate", "r1/format_rate",
                "r1/think_steps", "r1/response_chars", "length/mean"):
        assert all(0 <= r[key] for r in steps), key
    assert all(r["r1/format_rate"] == r["reward/format"] for r in steps)  # the same verdict, two names
    assert [r["step"] for r in rows if "eval/pass@1_greedy" in r] == [0, 1, 2]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["curves"] == str(tmp_path / "run" / "curves.png")
    marker = json.loads((tmp_path / "run" / "reasonloop-run.json").read_text())
    assert marker["command"] == "r1_zero"


def test_a_rule_reward_the_task_lacks_is_a_config_error(nano_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"task 'arithmetic' has no reward component \['correct'\]; its components "
                                          r"are \['accuracy', 'format', 'length'\]"):
        r1_zero.Trainer(load_config(r1_zero.Config, args(nano_model_dir, tmp_path / "run", "rule_rewards=[correct]")))
    assert not (tmp_path / "run").exists()


def test_a_marker_that_is_no_regular_expression_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"marker pattern '\(wait' is not a regular expression"):
        load_config(r1_zero.Config, ["verify_patterns=[(wait]"])


def test_curves_read_every_numeric_series(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "eval/pass@1_greedy": 0.5}\n{"step": 1, "length/mean": 7, "r1/verify_rate": 0.0,'
                    ' "stage": "x"}\nnot json\n{"step": 2, "length/mean": 9}\n')
    assert r1_zero.read_series(path) == {"eval/pass@1_greedy": [(0, 0.5)], "length/mean": [(1, 7.0), (2, 9.0)],
                                         "r1/verify_rate": [(1, 0.0)]}
    assert r1_zero.plot_curves(path, tmp_path / "c.png").is_file()
