"""The curriculum inside `reasonloop train` (recipes/rl.py's hooks): a killed run resumes to the same weights
and the same curriculum state, online filtering keeps only groups with a pass rate strictly between 0 and 1,
and the step logs the curriculum's estimate."""

from __future__ import annotations

import json

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.data.curriculum import CurriculumSampler, group_pass_rate
from reasonloop.recipes import rl
from toy_tasks import LetterFirstTask

CURRICULUM = ["curriculum.enabled=true", "curriculum.window=4", "curriculum.milestones=[0.3]"]


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())


def make_cfg(model_dir, out, *extra):
    return load_config(rl.Config, [
        f"model.name={model_dir}", f"output_dir={out}", "steps=2", "prompts_per_step=8", "group_size=8",
        "sampling.max_new_tokens=6", "eval_n=4", "eval_k=0", "eval_every=0", "save_every=0", "samples_every=0",
        "train_pool=64", "micro_batch_size=16", "optim.warmup_steps=0", "optim.lr=0.003", *extra])


def test_killed_and_resumed_curriculum_run_ends_with_the_same_weights_and_state(nano_model_dir, tmp_path, toy_task,
                                                                                 monkeypatch):
    args = ["steps=4", "save_every=2", *CURRICULUM]
    straight = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "a", *args))
    straight.train()

    cfg = make_cfg(nano_model_dir, tmp_path / "b", *args)
    victim = rl.Trainer(cfg)
    real_step, calls = rl.Trainer.step, {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(rl.Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        victim.train()
    monkeypatch.setattr(rl.Trainer, "step", real_step)
    resumed = rl.Trainer(cfg)
    assert resumed.state.step == 2
    saved = resumed.prompts.state_dict()
    assert saved["calls"] >= 2 and any(lv["window"] for lv in saved["levels"].values())  # restored, not fresh
    resumed.train()
    assert isinstance(resumed.prompts, CurriculumSampler)
    assert resumed.prompts.state_dict() == straight.prompts.state_dict()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_online_filter_keeps_only_groups_strictly_between_0_and_1(nano_model_dir, tmp_path, toy_task):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "run", *CURRICULUM, "max_refills=3"))
    data, stats = trainer.collect()
    starts = [sum(data.group_sizes[:b]) for b in range(len(data.group_sizes))]
    rates = [float(data.components["accuracy"][s:s + g].mean()) for s, g in zip(starts, data.group_sizes)]
    assert rates and all(0 < r < 1 for r in rates), rates
    assert stats["dynamic_sampling/kept_groups"] == len(rates)
    assert stats["curriculum/capability"] == pytest.approx(trainer.prompts.capability(""))
    assert stats["curriculum/p/1"] + stats["curriculum/p/2"] == pytest.approx(1.0)


def test_every_rolled_out_group_feeds_the_window_filtered_or_not(nano_model_dir, tmp_path, toy_task):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "run", "curriculum.enabled=true",
                                  "curriculum.window=1000", "max_refills=2"))
    seen = []
    real_rollout = trainer.rollout

    def recording(prompts, timing):
        groups = real_rollout(prompts, timing)
        seen.extend(group_pass_rate(g.components) for g in groups)
        return groups

    trainer.rollout = recording
    trainer.collect()
    windows = trainer.prompts.state_dict()["levels"]
    assert sorted(x for lv in windows.values() for x in lv["window"]) == sorted(seen)


def test_the_curriculum_block_is_part_of_the_train_config(nano_model_dir, tmp_path):
    cfg = make_cfg(nano_model_dir, tmp_path / "run", "curriculum.enabled=true", "curriculum.sigma=0.3")
    assert cfg.curriculum.enabled and cfg.curriculum.sigma == 0.3 and cfg.curriculum.filter
    with pytest.raises(ConfigError, match="curriculum.sigma"):
        make_cfg(nano_model_dir, tmp_path / "run", "curriculum.sigma=0")


def test_curriculum_state_is_in_the_checkpoint(nano_model_dir, tmp_path, toy_task):
    out = tmp_path / "run"
    rl.Trainer(make_cfg(nano_model_dir, out, *CURRICULUM, "save_every=2")).train()
    (state,) = out.glob("checkpoints/step-*/state.json")
    prompts = json.loads(state.read_text())["prompts"]
    assert prompts["curriculum"] is True and set(prompts["levels"]) == {"1", "2"}
