"""Recipe-level tests of online RL on a locally built nano model (no downloads, CPU, seconds each)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reasonloop.algos.aggregation import aggregate
from reasonloop.algos.covariance import token_covariance
from reasonloop.config import ConfigError, load_config
from reasonloop.recipes import rl
from reasonloop.recipes.presets import RL_PRESETS
from reasonloop.rewards.core import RewardSpec
from toy_tasks import LETTERS, LetterFirstTask

GOLDEN = Path(__file__).parents[1] / "golden" / "rl_nano.json"
@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())


def base_args(model_dir, tmp_path):
    return [f"model.name={model_dir}", f"output_dir={tmp_path / 'run'}", "steps=2", "prompts_per_step=8",
            "group_size=8", "sampling.max_new_tokens=6", "eval_n=4", "eval_k=0", "eval_every=0", "save_every=0",
            "samples_every=0", "train_pool=64", "micro_batch_size=16", "optim.warmup_steps=0", "optim.lr=0.003"]


def make_cfg(model_dir, tmp_path, *extra):
    return load_config(rl.Config, [*base_args(model_dir, tmp_path), *extra])


def letter_first_prob(trainer) -> float:
    """Mean probability that the first completion token is a lowercase letter, over held-out prompts."""
    tok = trainer.tokenizer
    letter_ids = torch.tensor([tok.convert_tokens_to_ids(d) for d in sorted(LETTERS)])
    prompts = [trainer.render(ex.prompt) for ex in trainer.task.examples("test", 16)]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    position = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = trainer.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               position_ids=position).logits[:, -1]
    return float(logits.softmax(-1)[:, letter_ids].sum(-1).mean())


@pytest.mark.parametrize("preset", sorted(RL_PRESETS))
def test_one_step_raises_the_probability_of_rewarded_completions(preset, nano_model_dir, tmp_path, toy_task):
    # Six-token completions are all "overlong" and truncated: DAPO's length pieces would swamp the toy
    # reward, so they are off here (they have their own unit tests in tests/algos).
    fits = ["overlong_buffer=0", "mask_truncated=false"] if preset == "dapo" else []
    trainer = rl.Trainer(load_config(rl.Config, [*RL_PRESETS[preset], *base_args(nano_model_dir, tmp_path), *fits]))
    before = letter_first_prob(trainer)
    metrics, data = trainer.step()
    assert 0 < float(data.components["accuracy"].mean()) < 1, "the batch must hold rewarded and unrewarded samples"
    after = letter_first_prob(trainer)
    assert after > before * 1.05, f"{preset}: P(letter first) {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("extra", [
    [],
    ["agg_mode=token_mean"],
    ["agg_mode=seq_mean_token_sum_norm", "std_mode=none"],
    ["advantage=gae", "critic=head", "kl_in=reward", "kl_estimator=k1"],
    ["cov_control=clip_cov", "cov_ratio=0.1", "cov_low=0"],
])
def test_gradients_do_not_depend_on_micro_batch_size(extra, nano_model_dir, tmp_path, toy_task):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, *extra))
    data, _ = trainer.collect()
    scores = trainer.score_tokens(data)
    mask = data.tokens.completion_mask.float()
    estimated = trainer.advantages(data, scores, mask)
    from reasonloop.algos.aggregation import step_normalizer

    normalizer = step_normalizer(mask, trainer.cfg.agg_mode, max_len=trainer.cfg.sampling.max_new_tokens)
    weights, _ = trainer.covariance_control(data, scores, estimated.advantages, mask)  # Clip-Cov's, or None
    update = rl.UpdateBatch(data, scores, estimated.advantages, estimated.returns, mask, weights, normalizer)
    grads = []
    for mbs in (64, 5):
        trainer.cfg.micro_batch_size = mbs
        trainer.optimizer.zero_grad(set_to_none=True)
        out = trainer.accumulate_gradients(update)
        grads.append(([p.grad.clone() for p in trainer.model.parameters() if p.grad is not None], out["loss"]))
    (g_whole, loss_whole), (g_micro, loss_micro) = grads
    assert loss_whole == pytest.approx(loss_micro, rel=1e-5, abs=1e-7)
    assert any(g.abs().sum() > 0 for g in g_whole)
    for a, b in zip(g_whole, g_micro):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def final_params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("algo", [["epochs=2", "kl_coef=0.05"], RL_PRESETS["ppo"],
                                  ["cov_control=clip_cov", "cov_ratio=0.1", "cov_low=0"]], ids=["grpo", "ppo", "clip_cov"])
def test_killed_and_resumed_run_ends_with_the_same_parameters(algo, nano_model_dir, tmp_path, toy_task, monkeypatch):
    args = ["steps=4", "save_every=2", *algo]
    straight = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "a", *args))
    straight.train()

    cfg = make_cfg(nano_model_dir, tmp_path / "b", *args)
    resumed = killed_at_third_step_and_reloaded(monkeypatch, cfg)
    assert resumed.state.step == 2
    resumed.train()
    a, b = final_params(straight), final_params(resumed)
    if straight.critic is not None:
        a.update({f"critic.{k}": v for k, v in straight.critic.state_dict().items()})
        b.update({f"critic.{k}": v for k, v in resumed.critic.state_dict().items()})
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_positive_weight_scales_the_advantages_the_update_trains_on(nano_model_dir, tmp_path, toy_task, monkeypatch):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "positive_weight=0.25"))
    estimated, trained = [], []
    advantages = trainer.advantages
    monkeypatch.setattr(trainer, "advantages", lambda *a: estimated.append(advantages(*a)) or estimated[-1])
    monkeypatch.setattr(trainer, "_update", lambda update: trained.append(update.advantages) or {})
    trainer.step()
    raw = estimated[0].advantages
    assert (raw > 0).any() and (raw < 0).any()
    torch.testing.assert_close(trained[0], torch.where(raw > 0, 0.25 * raw, raw))


def test_clip_cov_zeroes_the_loss_weight_of_k_tokens_inside_its_window(nano_model_dir, tmp_path, toy_task, monkeypatch):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "cov_control=clip_cov", "cov_ratio=0.05", "cov_low=0"))
    trained = []
    monkeypatch.setattr(trainer, "_update", lambda update: trained.append(update) or {})
    metrics, data = trainer.step()
    update = trained[0]
    mask = update.loss_mask
    cov = token_covariance(data.batch.logprobs, update.advantages, mask)  # one epoch: the sampler's log-probs
    dropped = update.token_weights == 0
    assert int(dropped.sum()) == max(int(0.05 * mask.sum()), 1) == metrics["cov/tokens"]
    assert bool((cov[dropped] > 0).all()) and bool(mask.bool()[dropped].all())
    assert update.kl_cov_selected is None


def test_kl_cov_adds_its_penalty_on_the_top_covariance_tokens(nano_model_dir, tmp_path, toy_task, monkeypatch):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "cov_control=kl_cov", "cov_ratio=0.05", "epochs=2",
                                  "kl_cov_coef=3"))
    trained = []
    monkeypatch.setattr(trainer, "_update", lambda update: trained.append(update) or {})
    metrics, data = trainer.step()
    update = trained[0]
    selected, mask = update.kl_cov_selected, update.loss_mask
    cov = token_covariance(update.scores.old, update.advantages, mask)  # epochs=2: the trainer's old log-probs
    assert int(selected.sum()) == max(int(0.05 * mask.sum()), 1) == metrics["cov/tokens"]
    assert float(cov[selected].min()) >= float(cov[mask.bool() & ~selected].max())
    # the loss gains 3 * |log ratio| on those tokens: shift the old log-probs of the selected ones by 0.1
    shifted = dataclasses.replace(update.scores, old=update.scores.old - 0.1 * selected)
    plain = dataclasses.replace(update, kl_cov_selected=None)
    trainer.optimizer.zero_grad(set_to_none=True)
    without = trainer.accumulate_gradients(dataclasses.replace(plain, scores=shifted))["loss"]
    trainer.optimizer.zero_grad(set_to_none=True)
    with_penalty = trainer.accumulate_gradients(dataclasses.replace(update, scores=shifted))["loss"]
    expected = float(aggregate(3 * 0.1 * selected.double(), mask.double(), trainer.cfg.agg_mode, update.normalizer,
                               trainer.cfg.sampling.max_new_tokens))
    assert with_penalty - without == pytest.approx(expected, rel=1e-3)


def test_nan_reward_and_raising_reward_are_counted_not_fatal(nano_model_dir, tmp_path, monkeypatch):
    class BadTask(LetterFirstTask):
        def rewards(self):
            calls = {"n": 0}

            def boom(prompts, completions, **_):  # fails whole on the second batch only: counted, not fatal
                calls["n"] += 1
                if calls["n"] == 2:
                    raise ValueError("verifier crashed")
                return [0.0] * len(completions)
            return [*super().rewards(), RewardSpec("boom", boom),
                    RewardSpec("nan", lambda prompts, completions, **_: [float("nan"), 1.0] * (len(completions) // 2))]

    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: BadTask())
    result = rl.Trainer(make_cfg(nano_model_dir, tmp_path)).train()
    assert result["alerts"]["reward_error/boom"] == 64
    assert result["alerts"]["reward_error/nan"] == 2 * 32
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)


def test_non_finite_loss_skips_the_step_and_rollback_restores(nano_model_dir, tmp_path, toy_task, monkeypatch):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "steps=4", "save_every=1", "rollback=true"))
    real = rl.Trainer.accumulate_gradients
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = real(self, *a, **k)
        if calls["n"] == 3:
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(rl.Trainer, "accumulate_gradients", poisoned)
    result = trainer.train()
    assert result["bad_steps"] >= 1 and result["rollbacks"] == 1 and result["alerts"]["nan"] == 1
    assert trainer.state.lr_scale == 0.5
    assert trainer.scheduler.base_lrs[0] == pytest.approx(0.5 * trainer.cfg.optim.lr)


KEEP_BEST = ["steps=4", "val_n=8", "val_every=1", "keep_best=pass@1_greedy"]


def scripted_validation(monkeypatch, values: dict[int, float | list[float]]) -> dict[int, dict]:
    """keep_best sees `values[step]` on each of the 8 validation problems at each validation (one value: the
    same on every problem); returns the weights each validated step had."""
    kept: dict[int, dict] = {}
    real = rl.Trainer.validate

    def validate(self):
        value = values[self.state.step]
        monkeypatch.setattr(rl, "problem_values", lambda rows, terms, k: np.asarray(
            value if isinstance(value, list) else [value] * 8, dtype=float))
        kept[self.state.step] = final_params(self)
        return real(self)

    monkeypatch.setattr(rl.Trainer, "validate", validate)
    return kept


def test_keep_best_ends_the_run_with_the_weights_of_its_best_validation_step(nano_model_dir, tmp_path, toy_task,
                                                                             monkeypatch):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, *KEEP_BEST))
    assert len(trainer.validation) == 8 and len(trainer.pool) == 64  # the training pool is left whole
    held_out, validation = {e.prompt for e in trainer.held_out}, {e.prompt for e in trainer.validation}
    assert not held_out & validation and not validation & {e.prompt for e in trainer.pool}
    kept = scripted_validation(monkeypatch, {0: 0.2, 1: 0.5, 2: 0.9, 3: 0.9, 4: 0.1})
    result = trainer.train()
    assert sorted(kept) == [0, 1, 2, 3, 4]
    assert result["best"] == {"step": 2, "metric": "pass@1_greedy", "value": 0.9}  # the tie at step 3 keeps step 2
    assert result["kept_step"] == 2
    final = final_params(trainer)
    for k, v in kept[2].items():
        torch.testing.assert_close(final[k], v, atol=0, rtol=0, msg=k)
    assert any(not torch.equal(final[k], v) for k, v in kept[4].items())
    from safetensors.torch import load_file

    saved = load_file(str(Path(result["model_dir"]) / "model.safetensors"))
    for k, v in saved.items():
        torch.testing.assert_close(v, kept[2][k], atol=0, rtol=0, msg=k)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val/pass@1_greedy" in r] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in rows if "best/pass@1_greedy" in r] == [4]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"]["step"] == 2 and summary["last"]["overall"]["n"] == 4
    # the comparison with the table before training is of the model kept
    after_greedy = {d["metric"]: d["other"] for d in summary["vs_before"]}["pass@1_greedy"]
    assert after_greedy == pytest.approx(result["after"]["overall"]["pass@1_greedy"])
    # ... and the last step's model, whose rows are kept beside the kept model's, against it too
    last_vs = {d["metric"]: d for d in summary["last_vs_before"]}
    for metric, d in last_vs.items():
        assert d["other"] == pytest.approx(summary["last"]["overall"][metric])
        assert d["baseline"] == pytest.approx(result["before"]["overall"][metric])
    last_rows, kept_rows = ((tmp_path / "run" / f"held_out_{n}.jsonl").read_text().splitlines() for n in ("last", "after"))
    assert len(last_rows) == len(kept_rows) == 4 and last_rows != kept_rows


MEASURED_FROM_SFT = ["optim.lr=5e-5", "prompts_per_step=32", "eval_k=8", "val_n=300", "val_every=20",
                     "keep_best=pass@1_greedy+pass@8"]


def sft_written(model_dir, tmp_path, command="sft") -> Path:
    """A copy of the nano model as `reasonloop <command>` leaves it: <run>/model beside the run's marker."""
    import shutil

    run = tmp_path / f"{command}-run"
    shutil.copytree(model_dir, run / "model")
    (run / "reasonloop-run.json").write_text(json.dumps({"reasonloop": "0.1.0", "command": command}))
    return run / "model"


def test_the_shipped_rl_from_sft_setting_is_the_measured_one(nano_model_dir):
    """configs/rl_from_sft.yaml is docs/r1.md's measured setting (pass@k is pass@<eval_k>: pass@8)."""
    cfg = load_config(rl.Config, ["setting=from_sft"])
    measured = load_config(rl.Config, ["setting=from_sft", *MEASURED_FROM_SFT[:-1]])
    assert cfg == measured and cfg.keep_best == "pass@1_greedy+pass@k"
    assert rl.selection_terms(cfg.keep_best, cfg.eval_k) == ["pass@1_greedy", "pass@8"]
    assert load_config(rl.Config, [str(rl.FROM_SFT)]) == dataclasses.replace(cfg, setting="auto")


def test_setting_auto_reads_the_from_sft_file_under_the_users_keys_for_an_sft_runs_model(nano_model_dir, tmp_path):
    sft_model = sft_written(nano_model_dir, tmp_path)
    defaults = rl.Config()
    want = {"lr": 5e-5, "prompts": 32, "eval_k": 8, "val_n": 300, "keep_best": "pass@1_greedy+pass@k"}

    def got(*args, cls=rl.Config):
        c = load_config(cls, list(args))
        return {"lr": c.optim.lr, "prompts": c.prompts_per_step, "eval_k": c.eval_k, "val_n": c.val_n,
                "keep_best": c.keep_best}

    plain = {"lr": defaults.optim.lr, "prompts": defaults.prompts_per_step, "eval_k": defaults.eval_k,
             "val_n": defaults.val_n, "keep_best": defaults.keep_best}
    assert got(f"model.name={sft_model}") == want
    assert got(f"model.name={sft_model}", "optim.lr=1e-4", "eval_k=4") == {**want, "lr": 1e-4, "eval_k": 4}
    assert got(f"model.name={sft_model}", "setting=defaults") == plain
    # other starting points keep the defaults: the shipped model, a model another command wrote, a bare directory
    assert got() == got("model.name=tiny-arith") == plain
    assert got(f"model.name={sft_written(nano_model_dir, tmp_path, 'pretrain')}") == plain
    assert got(f"model.name={nano_model_dir}") == plain
    assert got("setting=from_sft") == got(f"model.name={nano_model_dir}", "setting=from_sft") == want
    # the frameworks evaluate in their own way (no validation): auto keeps their defaults, from_sft is refused
    from reasonloop.recipes import r1_zero

    assert got(f"model.name={sft_model}", cls=r1_zero.Config)["val_n"] == 0
    with pytest.raises(ConfigError, match="setting=from_sft is `train`'s"):
        load_config(r1_zero.Config, ["setting=from_sft"])
    # a key of the user's that the file's keep_best cannot live with names the setting it came from
    with pytest.raises(ConfigError, match="setting=auto read keep_best from configs/rl_from_sft.yaml"):
        load_config(rl.Config, [f"model.name={sft_model}", "eval_k=0"])


def test_setting_auto_trains_from_an_sft_runs_model_and_says_so(nano_model_dir, tmp_path, toy_task, capsys):
    # the toy task's test split is smaller than eval_n + 300: validation takes the problems left beside held-out
    sft_model = sft_written(nano_model_dir, tmp_path)
    args = [a for a in base_args(sft_model, tmp_path) if not a.startswith(("optim.lr", "prompts_per_step", "eval_k"))]
    cfg = load_config(rl.Config, [*args, "val_every=1"])
    assert (cfg.optim.lr, cfg.prompts_per_step, cfg.val_n) == (5e-5, 32, 300)
    result = rl.Trainer(cfg).train()
    assert "setting=auto: " in capsys.readouterr().out
    assert result["kept_step"] in (0, 1, 2) and "pass@8" in result["after"]["overall"]
    assert result["best"]["metric"] == "pass@1_greedy+pass@k"


def test_setting_auto_says_so_when_it_keeps_the_defaults_for_a_model_of_the_users(nano_model_dir, tmp_path, toy_task,
                                                                                  capsys):
    rl.Trainer(make_cfg(nano_model_dir, tmp_path, "steps=1")).train()
    assert f"setting=auto: {nano_model_dir} is not a model `reasonloop sft` wrote, so train keeps its defaults" \
        in capsys.readouterr().out
    rl.Trainer(make_cfg(nano_model_dir, tmp_path / "b", "steps=1", "setting=defaults")).train()
    assert "setting=" not in capsys.readouterr().out  # a setting the user chose is not announced


def test_a_chunked_output_layer_trains_the_same_weights(nano_model_dir, tmp_path, toy_task, monkeypatch):
    from reasonloop.models import forward

    real, calls = forward._chunked_head, []
    monkeypatch.setattr(forward, "_chunked_head", lambda *a: calls.append(a[-1]) or real(*a))
    weights = []
    for chunk in (0, 5):
        trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path / str(chunk), "entropy_coef=0.01",
                                      f"forward.logit_chunk={chunk}"))
        trainer.train()
        weights.append(trainer.model.state_dict())
    assert calls and set(calls) == {5}  # the chunked path ran, and only in the second run
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, atol=2e-5, rtol=1e-4, msg=name)


def test_the_run_compares_after_with_before_problem_by_problem(nano_model_dir, tmp_path, toy_task):
    result = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "eval_n=12", "eval_k=2")).train()
    diffs = {d["metric"]: d for d in result["vs_before"]}
    assert set(diffs) == {"pass@1_greedy", "pass@1", "pass@2"}
    for metric, d in diffs.items():
        assert d["n"] == 12
        assert d["baseline"] == pytest.approx(result["before"]["overall"][metric])
        assert d["other"] == pytest.approx(result["after"]["overall"][metric])
        assert d["lo"] - 1e-12 <= d["other"] - d["baseline"] <= d["hi"] + 1e-12
    for name in ("held_out_before.jsonl", "held_out_after.jsonl"):  # a row per greedy decode and per sample
        assert len((tmp_path / "run" / name).read_text().splitlines()) == 12 * 3


def test_keep_best_keeps_the_last_model_when_the_best_is_better_only_by_noise(nano_model_dir, tmp_path, toy_task,
                                                                            monkeypatch):
    one_problem = [1.0] + [0.0] * 7  # step 1 is the best by one validation problem of 8: not resolved
    kept = scripted_validation(monkeypatch, {0: 0.0, 1: one_problem, 2: 0.0, 3: 0.0, 4: 0.0})
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "paired", *KEEP_BEST))
    result = trainer.train()
    assert result["best"]["step"] == 1 and result["kept_step"] == 4 and result["last"] == result["after"]
    for k, v in kept[4].items():
        torch.testing.assert_close(final_params(trainer)[k], v, atol=0, rtol=0, msg=k)
    unguarded = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "argmax", *KEEP_BEST, "keep_best_paired=false"))
    assert unguarded.train()["kept_step"] == 1
    for k, v in kept[1].items():
        torch.testing.assert_close(final_params(unguarded)[k], v, atol=0, rtol=0, msg=k)


def test_keep_best_keeps_the_last_model_when_the_last_step_is_best(nano_model_dir, tmp_path, toy_task, monkeypatch):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, *KEEP_BEST))
    kept = scripted_validation(monkeypatch, {0: 0.2, 1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8})
    result = trainer.train()
    assert result["best"]["step"] == 4 and result["last"] == result["after"]
    for k, v in kept[4].items():
        torch.testing.assert_close(final_params(trainer)[k], v, atol=0, rtol=0, msg=k)


def test_keep_best_survives_a_kill_and_resume(nano_model_dir, tmp_path, toy_task, monkeypatch):
    values = {0: 0.1, 1: 0.8, 2: 0.3, 3: 0.5, 4: 0.6}  # the best step comes before the checkpoint at step 2
    kept = scripted_validation(monkeypatch, values)
    straight = rl.Trainer(make_cfg(nano_model_dir, tmp_path / "a", *KEEP_BEST, "save_every=2"))
    assert straight.train()["best"]["step"] == 1
    step1 = kept[1]
    resumed = killed_at_third_step_and_reloaded(
        monkeypatch, make_cfg(nano_model_dir, tmp_path / "b", *KEEP_BEST, "save_every=2"))
    assert resumed.state.step == 2 and resumed.best.step == 1
    assert resumed.train()["best"]["step"] == 1
    for k, v in step1.items():
        torch.testing.assert_close(final_params(resumed)[k], v, atol=0, rtol=0, msg=k)


def test_validation_is_the_plain_trainers_only(nano_model_dir, tmp_path, toy_task):
    class OwnEvaluation(rl.Trainer):
        def evaluate(self):
            return {}

    with pytest.raises(ConfigError, match="evaluates in its own way"):
        OwnEvaluation(make_cfg(nano_model_dir, tmp_path, "val_n=8"))


def test_golden_per_step_losses(nano_model_dir, tmp_path, toy_task):
    """A fixed-seed run whose per-step figures are committed; any numerical change shows up here."""
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "steps=3", "epochs=2", "kl_coef=0.05"))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    got = [{k: r[k] for k in ("step", "loss", "reward/mean", "entropy", "kl", "grad_norm")} for r in rows if "loss" in r]
    if os.environ.get("REASONLOOP_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1))
    expected = json.loads(GOLDEN.read_text())
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for g, e in zip(got, expected):
        for key in e:
            assert g[key] == pytest.approx(e[key], rel=1e-4, abs=1e-6), (g["step"], key)


@pytest.mark.parametrize("extra", [
    ["adaptive_group=true", "group_size_min=2", "group_size_max=6"],
    ["advantage=grpo_difficulty"],
    ["advantage=grpo_hierarchical"],
    ["reward_norm=running"],
    ["reward_norm=rank"],
    ["loss=penalty", "epochs=2"],
    ["dual_clip=3", "epochs=2", "clip_high=0.28"],
    ["advantage=reinforce", "reinforce_baseline=moving_average"],
    ["kl_target=0.01", "kl_in=reward", "kl_estimator=k2"],
    ["tis_cap=2", "entropy_coef=0.01"],
    ["advantage=gae", "critic=separate"],
])
def test_variants_run_a_finite_step(extra, nano_model_dir, tmp_path, toy_task):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, *extra))
    metrics, data = trainer.step()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if isinstance(v, float)), metrics
    assert metrics["grad_norm"] > 0
    if trainer.cfg.adaptive_group:
        assert all(2 <= g <= 6 for g in data.group_sizes)


def test_adaptive_groups_grow_with_difficulty(nano_model_dir, tmp_path, toy_task):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "adaptive_group=true", "group_size_min=2",
                                  "group_size_max=10"))
    trainer.state.level_pass = {"1": 0.9, "2": 0.1}
    easy, hard = (trainer.group_size_for(ex) for ex in trainer.pool[:2])  # levels 1 and 2
    assert easy < hard and 2 <= easy and hard <= 10


def test_dynamic_sampling_keeps_only_informative_groups(nano_model_dir, tmp_path, toy_task):
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "dynamic_sampling=true", "max_refills=6"))
    data, stats = trainer.collect()
    groups = data.rewards.view(-1, 8)
    assert stats["dynamic_sampling/kept_groups"] == groups.shape[0]
    assert all(not bool((g == g[0]).all()) for g in groups)


def test_reward_funcs_from_a_module_drive_training(nano_model_dir, tmp_path, toy_task, monkeypatch):
    """A TRL-signature function named in the config replaces the task's reward and the policy learns it."""
    (tmp_path / "my_rewards.py").write_text(
        "from toy_tasks import LETTERS\n"
        "def letter_first(prompts, completions, level, **_):\n"
        "    assert len(prompts) == len(level) == len(completions)\n"
        "    return [float(c[:1] in LETTERS) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "task_rewards=false",
                                  "reward_funcs=[my_rewards:letter_first]", "reward_weights=[2.0]"))
    assert [s.name for s in trainer.reward_specs] == ["letter_first"]
    before = letter_first_prob(trainer)
    metrics, data = trainer.step()
    # the task's own verdicts are computed and logged (reward/task/...) but not trained on
    assert set(data.components) == {"letter_first", "task/accuracy"}
    torch.testing.assert_close(data.rewards, 2.0 * data.components["letter_first"])
    assert metrics["accuracy"] == pytest.approx(float(data.components["task/accuracy"].mean()))
    assert 0 < float(data.components["letter_first"].mean()) < 1
    assert letter_first_prob(trainer) > before * 1.05


def test_a_reward_model_checkpoint_is_one_more_reward_component(nano_model_dir, tmp_path, toy_task, tokenizer):
    from transformers import LlamaForSequenceClassification

    from reasonloop.models.tiny import build_config
    from reasonloop.rewards.reward_model import RewardModel

    torch.manual_seed(0)
    config = build_config(tokenizer, "nano")
    config.num_labels = 1
    rm_dir = tmp_path / "rm"
    LlamaForSequenceClassification(config).save_pretrained(str(rm_dir))
    tokenizer.save_pretrained(str(rm_dir))
    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, f"reward_model={rm_dir}", "reward_model_weight=0.5"))
    assert [s.name for s in trainer.reward_specs] == ["accuracy", "reward_model"]
    metrics, data = trainer.step()
    scores = RewardModel.from_pretrained(str(rm_dir)).score([e.prompt for e in data.examples], data.batch.completions)
    torch.testing.assert_close(data.components["reward_model"], torch.tensor(scores))
    assert data.components["reward_model"].std() > 0
    torch.testing.assert_close(data.rewards, data.components["accuracy"] + 0.5 * data.components["reward_model"])
    assert metrics["reward/reward_model"] == pytest.approx(float(data.components["reward_model"].mean()))


def test_reward_hooks_that_do_not_resolve_are_config_errors(nano_model_dir, tmp_path, toy_task):
    with pytest.raises(ConfigError, match="no_such_module"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, "reward_funcs=[no_such_module:score]"))
    with pytest.raises(ConfigError, match="'module:function'"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, "reward_funcs=[no_colon]"))
    with pytest.raises(ConfigError, match="reward_weights has 2 entries for 1"):
        make_cfg(nano_model_dir, tmp_path, "reward_funcs=[math:sqrt]", "reward_weights=[1.0,2.0]")
    with pytest.raises(ConfigError, match="task_rewards=false needs"):
        make_cfg(nano_model_dir, tmp_path, "task_rewards=false")
    with pytest.raises(ConfigError, match="sequence classifier"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, f"reward_model={tmp_path / 'missing'}"))


def test_a_user_estimator_named_module_function_drives_training(nano_model_dir, tmp_path, toy_task, monkeypatch):
    """docs/algorithms.md's example, verbatim: registered by the module, named by the config, learns."""
    from reasonloop.algos.estimators import ADVANTAGE_ESTIMATORS

    (tmp_path / "my_estimators.py").write_text(
        "from reasonloop.algos.estimators import register_advantage, sequence_estimator\n\n"
        "@register_advantage('median_baseline')\n"
        "@sequence_estimator\n"
        "def median_baseline(rewards, inp, levels, pass_rates, state):  # rewards [B, G]\n"
        "    return rewards - rewards.median(dim=-1, keepdim=True).values, state\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "advantage=my_estimators:median_baseline"))
        assert "median_baseline" in ADVANTAGE_ESTIMATORS
        before = letter_first_prob(trainer)
        trainer.step()
        assert letter_first_prob(trainer) > before * 1.05
    finally:
        for name in ("median_baseline", "my_estimators:median_baseline"):
            ADVANTAGE_ESTIMATORS.pop(name, None)
    from reasonloop.config import ConfigError

    with pytest.raises(ConfigError, match="not a registered estimator"):
        rl.Trainer(make_cfg(nano_model_dir, tmp_path, "advantage=no_such_module:f"))


def killed_at_third_step_and_reloaded(monkeypatch, cfg):
    """Train `cfg` until its third step raises KeyboardInterrupt (a kill), then load a new Trainer on the
    same run directory: the trainer a resumed run starts from."""
    victim = rl.Trainer(cfg)
    real_step = rl.Trainer.step
    calls = {"n": 0}

    def dying_step(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(rl.Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        victim.train()
    monkeypatch.setattr(rl.Trainer, "step", real_step)
    return rl.Trainer(cfg)


def test_a_served_engine_that_keeps_its_weights_is_not_what_the_held_out_tables_measure(nano_model_dir, tmp_path,
                                                                                        toy_task):
    """rollout.engine=openai samples a served model that training never updates: held-out tables come from an
    in-process sampler over the trained policy instead (same numbers as the torch engine's), never the server."""

    class Served:
        follows_policy = False

        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def generate(self, *args, **kwargs):
            self.calls += 1
            return self.inner.generate(*args, **kwargs)

        def update_weights(self, model):
            pass

    trainer = rl.Trainer(make_cfg(nano_model_dir, tmp_path, "eval_n=8"))
    served = trainer.engine = Served(trainer.engine)
    trainer.step()
    assert served.calls == 1  # rollouts come from the served engine
    with torch.no_grad():  # the policy moves away from what the server holds
        next(trainer.model.parameters()).add_(0.5)
    local = trainer.evaluate()
    assert served.calls == 1 and trainer.eval_engine() is not served
    trainer.engine = served.inner  # the torch engine samples the same trained policy: the same table
    assert trainer.evaluate() == local
