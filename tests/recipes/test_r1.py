"""The staged R1 runner: config checks, stage command lines, rejection sampling, and kill-and-resume (mid-stage
and between stages) to the weights of an uninterrupted run. A nano model, a few steps per stage."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from reasonloop.config import ConfigError, load_config
from reasonloop.errors import current_run_dir
from reasonloop.recipes import r1, rl, sft
from reasonloop.recipes.presets import RL_PRESETS
from toy_tasks import LetterFirstTask


# -- config and command lines ------------------------------------------------------------------------------


def test_default_stages_are_r1s_four_and_every_stage_config_loads(tmp_path):
    cfg = load_config(r1.Config, [f"output_dir={tmp_path / 'run'}"])
    assert [(s.name, s.command, s.model) for s in cfg.stages] == [
        ("cold_start", "sft", "start"), ("reasoning_rl", "train", "previous"),
        ("rejection", "rejection_sample", "previous"), ("sft_mix", "sft", "start"),
        ("readability_rm", "reward_model", "sft_mix"), ("all_scenarios", "train", "sft_mix")]
    pipeline = r1.Pipeline(cfg)
    configs = [pipeline.stage_config(i) for i in range(len(cfg.stages))]  # every stage's config validates
    assert configs[3].data == str(tmp_path / "run" / "stages" / "03-rejection" / "sft_mix.jsonl")
    assert configs[5].reward_model == str(tmp_path / "run" / "stages" / "05-readability_rm" / "model")
    assert configs[5].task == "mix:arithmetic+code_arith"
    assert not (tmp_path / "run").exists(), "checking configs writes nothing"


def test_stage_command_lines_resolve_models_references_presets_and_run_keys(tmp_path):
    cfg = load_config(r1.Config, [
        f"output_dir={tmp_path}", "start_model=/m/base", "threads=1", "seed=3",
        "stages=[{name: a, command: sft, overrides: [steps=2]},"
        " {name: b, command: dapo, overrides: ['reward_funcs=[x:y]', 'data_dir=@a/file.txt']},"
        " {name: c, command: train, model: a, overrides: ['reward_model=@b']},"
        " {name: d, command: eval, model: none, overrides: ['model.name=@start']}]",
        "stage_overrides=[a:steps=5]"])
    p = r1.Pipeline(cfg)
    stages = tmp_path / "stages"
    run_keys = lambda i, name: ["seed=3", "threads=1", "resume=auto", f"output_dir={stages / f'{i:02d}-{name}'}"]  # noqa: E731
    assert p.stage_args(0) == ["model.name=/m/base", "steps=2", "steps=5", *run_keys(1, "a")]
    assert p.stage_args(1) == ["setting=defaults", *RL_PRESETS["dapo"],
                               f"model.name={stages / '01-a' / 'model'}", "reward_funcs=[x:y]",
                               f"data_dir={stages / '01-a' / 'file.txt'}", *run_keys(2, "b")]
    assert p.stage_args(2) == ["setting=defaults", f"model.name={stages / '01-a' / 'model'}",
                               f"reward_model={stages / '02-b' / 'model'}", *run_keys(3, "c")]
    assert p.stage_args(3) == ["model.name=/m/base", *run_keys(4, "d")]


def test_an_rl_stage_keeps_trains_defaults_after_an_sft_stage_unless_it_sets_its_setting(tmp_path, nano_model_dir):
    """setting=auto would read rl_from_sft.yaml once the sft stage's model exists, and not in the check of every
    stage before the run: a stage reads the defaults (and the default pipeline's figures were measured so)."""
    import shutil

    stages = "stages=[{name: a, command: sft}, {name: b, command: train}, {name: c, command: train, model: a, " \
             "overrides: [setting=auto]}]"
    p = r1.Pipeline(load_config(r1.Config, [f"output_dir={tmp_path / 'r1'}", f"start_model={nano_model_dir}", stages]))
    stage_model = tmp_path / "r1" / "stages" / "01-a" / "model"  # as if stage a had run
    shutil.copytree(nano_model_dir, stage_model)
    (stage_model.parent / "reasonloop-run.json").write_text('{"command": "sft"}')
    assert load_config(rl.Config, [f"model.name={stage_model}"]).optim.lr == 5e-5  # what `train` alone reads
    assert (p.stage_config(1).optim.lr, p.stage_config(1).val_n) == (2e-4, 0)
    assert (p.stage_config(2).optim.lr, p.stage_config(2).val_n) == (5e-5, 300)


@pytest.mark.parametrize("args, message", [
    (["stages=[{name: a, command: nope}]"], "stage a: command 'nope' is not one of"),
    (["stages=[{name: a, command: r1}]"], "stage a: command 'r1' is not one of"),
    (["stages=[{name: a, command: sft}, {name: a, command: sft}]"], "stage names must differ"),
    (["stages=[{name: a, command: sft, model: b}, {name: b, command: sft}]"],
     "stage a: model='b' must be previous, start, none or an earlier stage's name"),
    (["stages=[{name: a, command: sft, overrides: [output_dir=x]}]"], "stage a: output_dir is set by the runner"),
    (["stages=[{name: a, command: sft, overrides: [steps]}]"], "stage a: override 'steps' is not key=value"),
    (["stages=[{name: 1a, command: sft}]"], "stage name '1a'"),
    (["stages=[]"], "stages is empty"),
    (["stage_overrides=[nope:steps=1]"], "no stage 'nope'"),
    (["stage_overrides=[cold_start]"], "is not STAGE:key=value"),
])
def test_bad_pipelines_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(r1.Config, args)


def test_a_bad_stage_override_is_reported_with_its_stage_before_anything_is_written(tmp_path):
    cfg = load_config(r1.Config, [f"output_dir={tmp_path / 'run'}", "stage_overrides=[sft_mix:stepz=3]"])
    with pytest.raises(ConfigError, match=r"stage sft_mix \(sft\): unknown config key 'stepz'"):
        r1.Pipeline(cfg).execute()
    assert not (tmp_path / "run").exists()


# -- rejection sampling -------------------------------------------------------------------------------------


def test_readable_means_strict_in_notation_and_one_equation_per_operation():
    q = "Q: 17+4-9=?\n"
    assert r1.readable("<think>17+4=21;21-9=12</think><answer>12</answer>", q)
    assert not r1.readable("<think>17+4-9=12</think><answer>12</answer>", q)  # a jump: one equation, two operations
    assert not r1.readable("<think>17+4=21;so 12</think><answer>12</answer>", q)  # out of notation
    assert not r1.readable("<think>17+4=21;21-9=12</think> <answer>12</answer>x", q)  # not the strict shape
    assert r1.lazy_rewrite("<think>17+4=21;21-9=12</think><answer>12</answer>", q) == \
        "<think>17+4-9=12</think><answer>12</answer>"
    assert r1.lazy_rewrite("<answer>def f(a):return a</answer>", "Q: code f(a)=a\n") is None


def test_rejection_sample_keeps_verified_readable_new_samples_and_mixes_direct_answers(nano_model_dir, tmp_path,
                                                                                        monkeypatch):
    class Scripted:  # per prompt: careful twice (a duplicate), a jump, a wrong careful trace
        def __init__(self, model, tokenizer):
            pass

        def generate(self, prompts, n, sampling, generator):
            from reasonloop.tasks.arithmetic import ArithmeticTask

            out = []
            for text in prompts:
                chain = text.split("Q: ")[1].split("=?")[0]
                p = next(p for p in ArithmeticTask((2,)).problems("train", 8) if p.text == chain)
                careful = f"<think>{p.trace(True)}</think><answer>{p.answer}</answer>"
                out += [careful, careful, f"<think>{p.trace(False)}</think><answer>{p.answer}</answer>",
                        f"<think>{p.trace(True)}</think><answer>{p.answer + 1}</answer>"][:n]
            return SimpleNamespace(completions=out)

    monkeypatch.setattr(r1, "TorchSampler", Scripted)
    cfg = load_config(r1.RejectionConfig, [f"model.name={nano_model_dir}", "task=arithmetic:2", "prompts=8",
                                           "samples_per_prompt=4", "direct_task=arithmetic:1", "direct_records=3",
                                           f"output_dir={tmp_path / 'rs'}"])
    result = r1.rejection_sample(cfg)
    assert {k: result[k] for k in ("generated", "verified", "readable", "duplicates_dropped", "kept_reasoning",
                                   "direct", "mix")} == {
        "generated": 32, "verified": 24, "readable": 16, "duplicates_dropped": 8, "kept_reasoning": 8, "direct": 3,
        "mix": 11}
    mix = [json.loads(line) for line in (tmp_path / "rs" / "sft_mix.jsonl").read_text().splitlines()]
    assert sorted(r["kind"] for r in mix) == ["direct"] * 3 + ["reasoning"] * 8
    pairs = [json.loads(line) for line in (tmp_path / "rs" / "readability_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 8 and all(p["chosen"].count("=") == 2 and p["rejected"].count("=") == 1 for p in pairs)


# -- kill and resume ---------------------------------------------------------------------------------------------


def pipeline_args(model_dir: str, out: Path) -> list[str]:
    """Two stages, each checkpointed every 2 of its 4 steps: an SFT, then GRPO on the toy task."""
    return [f"output_dir={out}", f"start_model={model_dir}", "threads=1", "eval_tasks=[]",
            "stages=[{name: warm, command: sft, model: start, overrides: [steps=4, save_every=2, batch_size=4,"
            " micro_batch_size=4, task_records=16, eval_n=2, eval_every=0, max_len=64]},"
            " {name: rl, command: train, overrides: [steps=4, save_every=2, prompts_per_step=4, group_size=4,"
            " sampling.max_new_tokens=6, eval_n=2, eval_k=0, eval_every=0, samples_every=0, train_pool=16,"
            " optim.warmup_steps=0, optim.lr=0.003]}]"]


@pytest.fixture
def toy_rl(monkeypatch):
    monkeypatch.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "stages" / "02-rl" / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(nano_model_dir, tmp_path_factory):
    """(final weights, run directory) of the pipeline run without interruption (once for the module)."""
    out = tmp_path_factory.mktemp("r1") / "straight"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl, "make_task", lambda spec, data_dir=None: LetterFirstTask())
        result = r1.run(load_config(r1.Config, pipeline_args(nano_model_dir, out)))
    assert [r["name"] for r in result["stages"].values()] == ["warm", "rl"]
    return final_weights(out), out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_killed_mid_stage_resumes_at_that_stage_and_step(uninterrupted, nano_model_dir, tmp_path, toy_rl, monkeypatch,
                                                          capsys):
    out = tmp_path / "killed"
    cfg = load_config(r1.Config, pipeline_args(nano_model_dir, out))
    real_step, calls = rl.Trainer.step, {"n": 0}

    def dying_step(self):  # the third RL step dies: the stage has its step-2 checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self)

    monkeypatch.setattr(rl.Trainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        r1.run(cfg)
    assert (out / "stages" / "02-rl" / "checkpoints" / "step-000002").is_dir()
    assert current_run_dir() == out, "Ctrl-C's message names the r1 run, not the stage's sub-run"
    monkeypatch.setattr(rl.Trainer, "step", real_step)
    sft_runs = {"n": 0}
    real_sft = sft.run
    monkeypatch.setattr(sft, "run", lambda c: (sft_runs.__setitem__("n", sft_runs["n"] + 1), real_sft(c))[1])
    capsys.readouterr()
    result = r1.run(cfg)
    printed = capsys.readouterr().out
    assert sft_runs["n"] == 0, "the finished SFT stage must not run again"
    assert "stage 1 warm: finished earlier, skipped" in printed
    assert "rl (train) - resuming" in printed and "train: resumed from" in printed and "at step 2" in printed
    assert result["stages"]["rl"]["resumed"] is True
    assert_same(final_weights(out), uninterrupted[0])


def test_killed_between_stages_resumes_at_the_next_stage(uninterrupted, nano_model_dir, tmp_path, toy_rl, monkeypatch,
                                                         capsys):
    out = tmp_path / "killed"
    cfg = load_config(r1.Config, pipeline_args(nano_model_dir, out))
    real_run_stage = r1.Pipeline.run_stage

    def dies_before_rl(self, i):
        if i == 1:
            raise KeyboardInterrupt("killed")
        return real_run_stage(self, i)

    monkeypatch.setattr(r1.Pipeline, "run_stage", dies_before_rl)
    with pytest.raises(KeyboardInterrupt):
        r1.run(cfg)
    records = json.loads((out / "stages.json").read_text())
    assert list(records) == ["warm"] and not (out / "stages" / "02-rl").exists()
    monkeypatch.setattr(r1.Pipeline, "run_stage", real_run_stage)
    capsys.readouterr()
    result = r1.run(cfg)
    assert "stage 1 warm: finished earlier, skipped" in capsys.readouterr().out
    assert result["stages"]["rl"]["resumed"] is False
    assert_same(final_weights(out), uninterrupted[0])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["warm", "rl"], "one row per stage, none twice after the resume"


def test_a_changed_pipeline_does_not_resume_a_run(uninterrupted, nano_model_dir):
    out = uninterrupted[1]  # a finished run
    args = [a.replace("steps=4, save_every=2, prompts", "steps=6, save_every=2, prompts") for a in
            pipeline_args(nano_model_dir, out)]
    from reasonloop.train.run import RunDirError

    with pytest.raises(RunDirError, match="different config"):
        r1.run(load_config(r1.Config, args))


def test_the_stage_commands_are_the_cli_commands_of_the_same_modules():
    from reasonloop.cli import COMMANDS

    assert all(COMMANDS[name].module == module for name, module in r1.STAGE_MODULES.items())
    assert all(tuple(RL_PRESETS[name]) == COMMANDS[name].preset for name in RL_PRESETS)
