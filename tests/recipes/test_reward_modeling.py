"""`reasonloop reward_model`: a Bradley-Terry reward model on the nano model and the toy letter task."""

from __future__ import annotations

import json

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.recipes import reward_modeling
from reasonloop.rewards.reward_model import RewardModel
from toy_tasks import LETTERS, LetterFirstTask


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setattr(reward_modeling, "make_task", lambda spec, data_dir=None: LetterFirstTask())


def make_cfg(model_dir, out, *extra):
    return load_config(reward_modeling.Config, [
        f"model.name={model_dir}", f"output_dir={out}", "prompts=48", "eval_prompts=32", "samples_per_prompt=4",
        "max_new_tokens=4", "steps=12", "batch_size=16", "micro_batch_size=8", "optim.lr=0.003",
        "optim.warmup_steps=0", "save_every=0", *extra])


def test_the_reward_model_learns_the_verifier_on_held_out_pairs(tmp_path):
    """The shipped model's own arithmetic samples, labelled by the task's verifier: the reward model
    ranks held-out (correct, wrong) pairs well above chance, and the saved directory scores the same."""
    cfg = load_config(reward_modeling.Config, [
        f"output_dir={tmp_path / 'run'}", "prompts=96", "eval_prompts=48", "steps=20", "max_new_tokens=48",
        "save_every=0"])
    result = reward_modeling.run(cfg)
    assert result["train_pairs"] > 50 and result["held_out_pairs"] > 30
    assert 0.3 < result["accuracy_before"] < 0.7  # a fresh head: about chance
    assert result["accuracy_after"] > max(0.7, result["accuracy_before"] + 0.15), result
    rm = RewardModel.from_pretrained(result["model_dir"])  # as `train reward_model=` loads it
    task = reward_modeling.make_task("arithmetic")
    tok, policy = reward_modeling.load_policy(cfg.model, task)
    held_out = reward_modeling.sampled_pairs(
        reward_modeling.TorchSampler(policy, tok), task, task.examples("test", cfg.eval_prompts, seed=cfg.seed),
        lambda p: reward_modeling.render_prompt(tok, p), cfg, cfg.seed + 1)
    assert reward_modeling.pair_accuracy(rm, held_out) == pytest.approx(result["accuracy_after"])


def test_pairs_from_a_file_and_a_resumed_run_ends_where_an_uninterrupted_one_does(nano_model_dir, tmp_path,
                                                                                  toy_task):
    data = tmp_path / "pairs.jsonl"
    rows = [{"q": f"Q: {i}=?\n", "good": f"{sorted(LETTERS)[i % len(LETTERS)]}x", "bad": f"{i % 10}x"} for i in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [f"data={data}", "prompt_field=q", "chosen_field=good", "rejected_field=bad", "steps=6", "save_every=3"]
    whole = reward_modeling.run(make_cfg(nano_model_dir, tmp_path / "whole", *args))
    assert whole["train_pairs"] == 40
    expected = {k: v.clone() for k, v in RewardModel.from_pretrained(whole["model_dir"]).model.state_dict().items()}

    class Crash(Exception):
        pass

    steps_done = []
    original = reward_modeling.bradley_terry_step

    def crash_after_four(*args, **kwargs):
        if len(steps_done) == 4:
            raise Crash
        steps_done.append(1)
        return original(*args, **kwargs)

    out = tmp_path / "resumed"
    reward_modeling.bradley_terry_step = crash_after_four
    try:
        with pytest.raises(Crash):
            reward_modeling.run(make_cfg(nano_model_dir, out, *args))
    finally:
        reward_modeling.bradley_terry_step = original
    resumed = reward_modeling.run(make_cfg(nano_model_dir, out, *args))  # from the step-3 checkpoint
    got = RewardModel.from_pretrained(resumed["model_dir"]).model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, msg=k)
    assert resumed["accuracy_before"] == whole["accuracy_before"]


def test_no_pairs_is_a_config_error(nano_model_dir, tmp_path, toy_task):
    with pytest.raises(ConfigError, match="no training pairs"):
        reward_modeling.run(make_cfg(nano_model_dir, tmp_path / "run", "temperature=1e-6", "samples_per_prompt=2"))
    with pytest.raises(ConfigError, match="temperature must be > 0"):  # greedy can never give a pair
        make_cfg(nano_model_dir, tmp_path / "run", "temperature=0")
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        make_cfg(nano_model_dir, tmp_path / "run", "samples_per_prompt=1")
    with pytest.raises(ConfigError, match="LoRA"):
        make_cfg(nano_model_dir, tmp_path / "run", "model.lora.r=8")
