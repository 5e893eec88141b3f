"""`reasonloop train` runs on real-task loaders (fixture-sized GSM8K) and on reasoning-gym datasets."""

from __future__ import annotations

import json

import pytest

from reasonloop.config import load_config
from reasonloop.recipes import rl
from reasonloop.sandbox import NAMESPACES, isolation_level


def gsm8k_fixture(path):
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a}+{b}={a + b} apples.\n#### {a + b}"} for a in range(3, 15) for b in range(2, 6)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def small_run(model_dir, tmp_path, *extra):
    return load_config(rl.Config, [
        f"model.name={model_dir}", f"output_dir={tmp_path / 'run'}", "steps=1", "prompts_per_step=2",
        "group_size=2", "sampling.max_new_tokens=8", "eval_n=2", "eval_k=0", "save_every=0", "train_pool=8", *extra,
    ])


def test_train_on_gsm8k_from_a_local_file(nano_model_dir, tmp_path):
    data = gsm8k_fixture(tmp_path / "gsm8k.jsonl")
    result = rl.Trainer(small_run(nano_model_dir, tmp_path, "task=gsm8k", f"data_dir={data}")).train()
    assert result["after"]["overall"]["n"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if "reward/mean" in r)
    assert "reward/accuracy" in step and step["reward/accuracy"] == 0.0  # a random model is never right


def test_train_on_a_reasoning_gym_dataset(nano_model_dir, tmp_path):
    result = rl.Trainer(small_run(nano_model_dir, tmp_path, "task=reasoning_gym:basic_arithmetic")).train()
    assert result["after"]["overall"]["n"] == 2


@pytest.mark.skipif(isolation_level() != NAMESPACES, reason="code rewards run in the sandbox")
def test_train_on_code_arith_uses_tiny_code_and_gets_a_learning_signal(tmp_path):
    """The embedded default for code_arith is tiny-code: its samples pass and fail, so GRPO has signal."""
    cfg = load_config(rl.Config, [
        "task=code_arith:1,2", f"output_dir={tmp_path / 'run'}", "steps=1", "prompts_per_step=8", "group_size=8",
        "eval_n=4", "eval_k=0", "save_every=0", "train_pool=64", "threads=1", "seed=0",
    ])
    trainer = rl.Trainer(cfg)
    assert trainer.model.config.name_or_path.endswith("tiny-code")
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if "reward/mean" in r)
    assert 0.05 < step["reward/correct"] < 0.95 and step["zero_variance_frac"] < 1.0


def test_train_on_code_without_namespaces_stops_with_the_opt_in_named(tmp_path, monkeypatch, capsys):
    """No bubblewrap: the run must refuse at setup (not train on zero rewards) and say how to opt in."""
    from reasonloop.cli import main
    from reasonloop.sandbox import isolation

    weak = isolation.Isolation(isolation.RLIMITS, None, "/usr/bin/prlimit", "/usr/bin/setpriv", True, "no bwrap")
    monkeypatch.setattr("reasonloop.sandbox.runner.detect", lambda uid_base: weak)
    monkeypatch.delenv("REASONLOOP_ALLOW_UNISOLATED", raising=False)
    assert main(["train", "task=code_arith", "steps=1", "eval_n=2", f"output_dir={tmp_path}"]) == 2
    assert "REASONLOOP_ALLOW_UNISOLATED=1" in capsys.readouterr().err


@pytest.mark.skipif(isolation_level() != NAMESPACES, reason="code rewards run in the sandbox")
def test_train_on_a_codecontests_layout(nano_model_dir, tmp_path):
    rows = [{"name": f"p{k}", "description": f"Print {k} times the input number.",
             "public_tests": {"input": ["2\n"], "output": [f"{2 * k}\n"]}} for k in range(1, 9)]
    (tmp_path / "cc").mkdir()
    for split, part in (("train", rows[:6]), ("test", rows[6:])):
        (tmp_path / "cc" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    result = rl.Trainer(small_run(nano_model_dir, tmp_path, "task=codecontests", f"data_dir={tmp_path / 'cc'}")).train()
    assert result["after"]["overall"]["n"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in rows if "reward/mean" in r)["reward/correct"] == 0.0  # a random model writes no program
