"""Process rewards in online RL: an explicit PRM (`prm=`) and PRIME's implicit one (`process_reward=prime`)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from reasonloop.config import ConfigError, load_config
from reasonloop.recipes import rl
from reasonloop.rewards.core import RewardSpec
from test_rl import killed_at_third_step_and_reloaded, letter_first_prob, make_cfg
from toy_tasks import LETTERS, LetterFirstTask


class NoOutcomeTask(LetterFirstTask):
    """The toy task with an outcome reward that never varies: whatever is learned comes from process rewards."""

    def rewards(self):
        return [RewardSpec("accuracy", lambda prompts, completions, **_: [0.0] * len(completions))]


class LetterStepScorer:
    """A hand-written PRM: a step is right when it starts with a lowercase letter."""

    def __init__(self):
        self.calls = []

    def score_steps(self, prompt, steps):
        self.calls.append((prompt, steps))
        return [float(s[:1] in LETTERS) for s in steps]


@pytest.fixture
def fake_prm(monkeypatch):
    """`reasonloop.prm.load_prm` returning the letter scorer (whatever the prm branch provides)."""
    scorer, seen = LetterStepScorer(), []
    module = types.ModuleType("reasonloop.prm")
    module.load_prm = lambda path, device="cpu": seen.append((path, device)) or scorer
    monkeypatch.setitem(sys.modules, "reasonloop.prm", module)
    return scorer, seen


@pytest.mark.parametrize("args, message", [
    (["process_reward=prm"], "prm=<dir|oracle> goes with process_reward=prm"),
    (["process_reward=prime", "prm=oracle"], "prm=<dir|oracle> goes with process_reward=prm"),
    (["process_reward=explicit"], "process_reward"),
    (["prm=oracle", "advantage=gae", "critic=head"], "needs an estimator that reads process rewards"),
    (["process_reward=prime", "prime_beta=0"], "prime_beta > 0"),
    (["prm=oracle", "prm_delimiters=[';', '']"], "prm_delimiters must be non-empty strings"),
])
def test_bad_process_reward_settings_are_config_errors(args, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(rl.Config, [f"output_dir={tmp_path}", *args])


def test_prm_alone_selects_the_explicit_process_reward(tmp_path):
    cfg = load_config(rl.Config, [f"output_dir={tmp_path}", "prm=/some/prm"])
    assert cfg.process_reward == "prm"
    assert load_config(rl.Config, [f"output_dir={tmp_path}"]).process_reward == "none"


def test_prm_oracle_is_only_for_the_arithmetic_task(nano_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    with pytest.raises(ConfigError, match="prm=oracle is the exact step checker of the arithmetic task"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, "prm=oracle"))


def test_prm_steps_train_the_policy_when_the_outcome_says_nothing(nano_model_dir, tmp_path, monkeypatch, fake_prm):
    """One step of `train prm=<dir>` on a task whose outcome reward is constant: the (hand-written) PRM's step
    scores alone raise the probability of what it calls a right step (a completion starting with a letter)."""
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: NoOutcomeTask())
    scorer, seen = fake_prm
    # the nano model never writes '\x00': the whole completion is one step, and its score (on its last token)
    # is the return of every token before it
    scorer.delimiters = ["\x00"]  # the PRM's own delimiters (prm.json) are used when prm_delimiters is empty
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, f"prm={tmp_path / 'my-prm'}"))
    assert seen == [(str(tmp_path / "my-prm"), "cpu")] and trainer.step_delimiters == ["\x00"]
    before = letter_first_prob(trainer)
    metrics, data = trainer.step()
    assert float(data.rewards.std()) == 0.0, "the outcome reward must carry no signal here"
    assert 0 < metrics["process/step_score"] < 1 and metrics["process/steps"] >= 1
    assert [p for p, _ in scorer.calls] == [ex.prompt for ex in data.examples]  # the task's prompt, not rendered
    after = letter_first_prob(trainer)
    assert after > before * 1.05, f"P(letter first) {before:.4f} -> {after:.4f}"


def test_without_process_rewards_the_advantages_are_the_outcome_ones(nano_model_dir, tmp_path, monkeypatch, fake_prm):
    """A PRM that gives every step the same score adds exactly nothing (the group's steps all agree)."""
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    scorer, _ = fake_prm
    scorer.score_steps = lambda prompt, steps: [0.5] * len(steps)
    scorer.delimiters = ["\x00"]
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "prm=x", "prm_delimiters=['z','7']"))
    assert trainer.step_delimiters == ["z", "7"]  # given ones win over the PRM's own
    data, _ = trainer.collect()
    scores = trainer.score_tokens(data)
    mask = data.tokens.completion_mask.float()
    process, _ = trainer.process_rewards(data, scores)
    assert process.mask.sum() > 0
    with_process = trainer.advantages(data, scores, mask, process).advantages
    plain = trainer.advantages(data, scores, mask).advantages
    assert torch.equal(with_process, plain)


def test_prime_trains_its_implicit_prm_towards_the_verified_outcomes(nano_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "process_reward=prime", "advantage=prime", "kl_coef=0",
                                  "prime_beta=0.5", "prime_lr=0.01"))
    assert trainer.ref is not None  # PRIME's pi_ref, even without a KL term
    start = {k: v.clone() for k, v in trainer.implicit_prm.state_dict().items()}
    policy_before = letter_first_prob(trainer)
    metrics, data = trainer.step()
    # pi_phi == pi_ref at first (two copies of one model: equal up to float rounding)
    assert metrics["prime/reward_correct"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["prime/reward_wrong"] == pytest.approx(0.0, abs=1e-5)
    assert any(not torch.equal(start[k], v) for k, v in trainer.implicit_prm.state_dict().items())
    assert letter_first_prob(trainer) > policy_before * 1.05  # the outcome (RLOO) part trains the policy
    # the updated implicit PRM rewards the batch's right completions above its wrong ones
    process, m = trainer.process_rewards(data, rl.TokenScores())
    assert m["prime/reward_correct"] > 0 > m["prime/reward_wrong"]
    assert m["prime/loss"] < metrics["prime/loss"]


def test_prime_with_a_grpo_estimator_runs_a_finite_step(nano_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "process_reward=prime", "prm_coef=0.1"))
    metrics, _ = trainer.step()
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float))
    assert metrics["grad_norm"] > 0 and metrics["prime/grad_norm"] > 0


def test_prime_is_refused_for_a_task_without_verified_outcomes(nano_model_dir, tmp_path, monkeypatch):
    class NoAccuracy(LetterFirstTask):
        def rewards(self):
            return [RewardSpec("style", lambda prompts, completions, **_: [1.0] * len(completions))]

    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: NoAccuracy())
    with pytest.raises(ConfigError, match="has no 'accuracy' reward component"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, "process_reward=prime"))


def test_prime_killed_and_resumed_ends_with_the_same_policy_and_implicit_prm(nano_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    args = ["steps=4", "save_every=2", "process_reward=prime", "advantage=prime", "prime_lr=0.01"]
    straight = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "a", *args))
    straight.train()

    cfg = make_cfg(nano_model_dir, tmp_path / "b", *args)
    resumed = killed_at_third_step_and_reloaded(monkeypatch, cfg)
    assert resumed.state.step == 2
    # the implicit PRM's weights, AdamW moments and schedule came back from the checkpoint
    assert resumed.prm_scheduler.last_epoch == 2
    assert len(resumed.prm_optimizer.state) > 0
    resumed.train()
    for a, b in ((straight.model, resumed.model), (straight.implicit_prm, resumed.implicit_prm)):
        pa, pb = final_params_of(a), final_params_of(b)
        assert pa.keys() == pb.keys()
        for k in pa:
            torch.testing.assert_close(pa[k], pb[k], atol=0, rtol=0, msg=k)
    sa, sb = straight.prm_optimizer.state_dict()["state"], resumed.prm_optimizer.state_dict()["state"]
    for k in sa:
        torch.testing.assert_close(sa[k]["exp_avg"], sb[k]["exp_avg"], atol=0, rtol=0)


def final_params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_prm_that_does_not_load_is_a_config_error(nano_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
    module = types.ModuleType("reasonloop.prm")

    def load_prm(path, device="cpu"):
        raise ValueError(f"{path!r} has a 3-label head; a PRM has 2 (wrong, correct)")

    module.load_prm = load_prm
    monkeypatch.setitem(sys.modules, "reasonloop.prm", module)
    with pytest.raises(ConfigError, match="prm='/no/prm' does not load as a process reward model: '/no/prm' has a 3-label"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, "prm=/no/prm"))
    monkeypatch.setitem(sys.modules, "reasonloop.prm", None)  # an install without the prm package
    with pytest.raises(ConfigError, match="this install has no reasonloop.prm"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, "prm=/no/prm"))
