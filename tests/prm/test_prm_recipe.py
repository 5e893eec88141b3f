"""`reasonloop prm`: it learns on the shipped model's MC labels, resumes where it stopped, trains an ORM,
and refuses bad configs."""

from __future__ import annotations

import json

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.prm import load_prm, read_step_file
from reasonloop.prm.metrics import evaluate
from reasonloop.recipes import prm as recipe


def make_cfg(out, *extra):
    return load_config(recipe.Config, [f"output_dir={out}", "threads=1", *extra])


def test_the_prm_learns_mc_labels_of_the_shipped_model(tmp_path):
    """32 train prompts, K=4: held-out step AUC well above the fresh head's, and the saved model (as
    load_prm reads it) reproduces the recorded metrics on the recorded held-out labels."""
    cfg = make_cfg(tmp_path / "run", "prompts=32", "eval_prompts=16", "error_traces=10", "steps=20", "save_every=0")
    result = recipe.run(cfg)
    assert result["kind"] == "prm" and result["train"]["solutions"] > 40 and result["train"]["rollouts"] > 100
    assert result["before"]["step_auc"] < 0.75
    assert result["after"]["step_auc"] > max(0.8, result["before"]["step_auc"] + 0.15), result
    assert result["after"]["outcome_auc"] > 0.75 and result["error_traces"] == 20
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["after"] == result["after"]
    prm = load_prm(result["model_dir"])
    held_out, _ = read_step_file(str(tmp_path / "run" / recipe.HELD_OUT_FILE))
    traces = recipe.make_task("arithmetic").first_error_traces("test", 10, seed=0)
    again = evaluate(prm, held_out, traces)
    assert again == {k: pytest.approx(v, abs=1e-6) for k, v in result["after"].items()}
    assert prm.tokens_read > 0 and result["prm_tokens_read"] > 0


def write_steps(path, n=24):
    rows = []
    for i in range(n):
        a, b = i % 7, i % 5
        wrong = i % 3 == 0
        rows.append({"prompt": f"Q: {a}+{b}=?\n", "completions": [f"<think>{a}+{b}={a + b + wrong}</think>",
                                                                    f"<answer>{a + b + wrong}</answer>"],
                     "labels": [not wrong, not wrong]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(nano_model_dir, tmp_path, monkeypatch):
    data = write_steps(tmp_path / "steps.jsonl")
    args = [f"model.name={nano_model_dir}", f"data={data}", f"eval_data={data}", "error_traces=5", "steps=6",
            "save_every=3", "batch_size=8", "micro_batch_size=4"]
    whole = recipe.run(make_cfg(tmp_path / "whole", *args))
    assert whole["train"] == {"source": data, "rows": 24, "skipped": 0, "skips": {}}
    expected = load_prm(whole["model_dir"]).model.state_dict()

    class Crash(Exception):
        pass

    done = []
    original = recipe.prm_step

    def crash_after_four(*a, **kw):
        if len(done) == 4:
            raise Crash
        done.append(1)
        return original(*a, **kw)

    out = tmp_path / "resumed"
    monkeypatch.setattr(recipe, "prm_step", crash_after_four)
    with pytest.raises(Crash):
        recipe.run(make_cfg(out, *args))
    monkeypatch.setattr(recipe, "prm_step", original)
    resumed = recipe.run(make_cfg(out, *args))  # from the step-3 checkpoint, labels read back from the run
    assert resumed["train"] == {**whole["train"], "reused": True}
    got = load_prm(resumed["model_dir"]).model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, msg=k)
    assert resumed["before"] == whole["before"] and resumed["after"] == pytest.approx(whole["after"])


def test_a_step_file_with_bad_rows_trains_on_the_rest_and_says_so(nano_model_dir, tmp_path):
    path = tmp_path / "steps.jsonl"
    write_steps(path, n=8)
    with open(path, "a") as f:
        f.write("{oops\n" + json.dumps({"prompt": "p", "completions": ["a"], "labels": [True, False]}) + "\n")
    result = recipe.run(make_cfg(tmp_path / "run", f"model.name={nano_model_dir}", f"data={path}",
                                 f"eval_data={path}", "error_traces=0", "steps=1", "save_every=0"))
    assert result["train"]["rows"] == 8 and result["train"]["skips"] == {"'labels' not one bool per step": 1}
    assert result["error_traces"] == 0 and "first_error_acc" not in result["after"]


def test_an_orm_labels_every_step_with_the_outcome(tmp_path):
    result = recipe.run(make_cfg(tmp_path / "orm", "labels=outcome", "prompts=8", "eval_prompts=4",
                                 "eval_mc_rollouts=1", "error_traces=2", "steps=2", "save_every=0"))
    assert result["kind"] == "orm" and result["train"]["rollouts"] == 0 and result["held_out"]["rollouts"] > 0
    rows, _ = read_step_file(str(tmp_path / "orm" / recipe.TRAIN_FILE))
    assert rows and all(r.labels == [r.outcome] * len(r.steps) for r in rows)
    assert json.loads((tmp_path / "orm" / "model" / "prm.json").read_text())["labels"] == "outcome"


def test_bad_configs_are_refused(tmp_path):
    for args, message in [(["labels=outcome", "data=x.jsonl"], "labels=outcome labels sampled solutions"),
                          (["temperature=0"], "temperature must be > 0"),
                          (["mc_rollouts=0"], "mc_rollouts and eval_mc_rollouts must be >= 1"),
                          (["label_type=fuzzy"], "label_type"),
                          (["delimiters=[]"], "delimiters must be a non-empty list"),
                          (["model.lora.r=4"], "LoRA")]:
        with pytest.raises(ConfigError, match=message):
            make_cfg(tmp_path / "run", *args)
