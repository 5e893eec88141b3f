"""The benchmarks: one config command, trainers built from config with an injected timing engine,
and each benchmark run end to end in tiny form."""

from __future__ import annotations

import json

import pytest

from reasonloop.bench import Config, run
from reasonloop.bench.grpo import ABLATIONS, rl_config, timed_trainer, trl_trainer, workload_keys
from reasonloop.bench.timing import TimedEngine
from reasonloop.cli import main
from reasonloop.config import ConfigError, load_config
from reasonloop.rollout.engine import RolloutConfig
from reasonloop.rollout.sampler import TorchSampler
from reasonloop.models.forward import ForwardConfig

TINY_GRPO = ["model=nano", "steps=1", "warmup=0", "prompts=2", "group_size=2", "max_new_tokens=8",
             "micro_batch_size=4"]


def test_bench_is_a_config_command_with_the_trainers_switch_keys():
    cfg = load_config(Config, ["vs=trl", "threads=2", "ablation=true", "rollout.fused_decode=false",
                               "forward.bucket_lengths=false", "grader.n=7"])
    assert (cfg.which, cfg.vs, cfg.threads, cfg.ablation) == ("grpo", "trl", 2, True)
    assert cfg.rollout == RolloutConfig(fused_decode=False) and cfg.forward == ForwardConfig(bucket_lengths=False)
    assert cfg.grader.n == 7
    with pytest.raises(ConfigError, match="which"):
        load_config(Config, ["which=gpu"])


def test_bench_cli_rejects_a_bad_key_with_exit_code_2(capsys):
    assert main(["bench", "which=gpu"]) == 2
    assert "reasonloop bench: config error" in capsys.readouterr().err


def test_rl_config_carries_the_switches_under_test(tmp_path):
    cfg = load_config(Config, [*TINY_GRPO, "rollout.static_cache=false", "forward.share_prompts=false"])
    own = rl_config(cfg, "some/model", tmp_path)
    assert own.rollout == RolloutConfig(static_cache=False) and own.forward == ForwardConfig(share_prompts=False)
    assert own.rollout is not cfg.rollout  # a copy: the bench's config is never shared with a trainer
    row = rl_config(cfg, "some/model", tmp_path, *ABLATIONS["+ length buckets"])
    assert row.rollout == RolloutConfig(static_cache=True, fused_decode=False)
    assert row.forward == ForwardConfig(share_prompts=True, bucket_lengths=True)
    assert (row.steps, row.prompts_per_step, row.group_size, row.kl_coef) == (1, 2, 2, 0.04)


def test_the_training_precision_reaches_both_trainers_and_the_subprocesses(nano_model_dir, tmp_path):
    cfg = load_config(Config, [*TINY_GRPO, "precision=bf16", "lr=1e-3", "rollout.decode_precision=bf16"])
    assert rl_config(cfg, "some/model", tmp_path).memory.precision == "bf16"
    assert rl_config(load_config(Config, TINY_GRPO), "some/model", tmp_path).memory.precision == "fp32"
    # a cell or memory subprocess is given the same workload (its own only/output_dir aside)
    child = load_config(Config, [f"{k}={v}" for k, v in workload_keys(cfg).items()])
    assert child == cfg
    with pytest.raises(ConfigError, match="precision"):
        load_config(Config, ["precision=fp16"])
    pytest.importorskip("trl")
    from reasonloop.tasks import make_task

    task = make_task("arithmetic")
    trainer, _ = trl_trainer(cfg, nano_model_dir, tmp_path / "trl", task.examples("train", 2), task.rewards(), 1, [])
    assert trainer.args.bf16 and trainer.accelerator.mixed_precision == "bf16"


def test_timed_trainer_rolls_out_through_the_configured_engine(nano_model_dir, tmp_path):
    cfg = load_config(Config, [*TINY_GRPO, "rollout.static_cache=false"])
    trainer, timed = timed_trainer(rl_config(cfg, nano_model_dir, tmp_path / "run"))
    try:
        assert trainer.engine is timed and isinstance(timed, TimedEngine)
        assert isinstance(timed.inner, TorchSampler) and timed.inner.static_cache is False
        assert timed.inner.model is trainer.model  # it samples from the policy being trained
        _, data = trainer.step()
        assert timed.seconds > 0
        assert timed.tokens == int(data.tokens.completion_mask.sum())
        timed.reset()
        assert (timed.seconds, timed.tokens) == (0.0, 0)
    finally:
        trainer.run.close()


def test_grpo_bench_runs_every_part_in_tiny_form(tmp_path):
    out = tmp_path / "bench"
    results = run(load_config(Config, [*TINY_GRPO, "ablation=true", "train_seq=16", "train_batch=2",
                                       f"output_dir={out}"]))
    assert len(results["grpo"]["steps"]) == 1 and results["grpo"]["gemm_only_s"] > 0
    assert results["grpo"]["completion_tokens"] > 0
    assert list(results["ablation"]) == list(ABLATIONS)
    assert results["generate"]["sampler"]["tokens_per_s"] > 0 and results["train"]["seq"] == 16
    assert json.loads((out / "bench.json").read_text())["config"]["which"] == "grpo"


def test_grader_bench_grades_every_pair(tmp_path):
    results = run(load_config(Config, ["which=grader", "grader.n=60", "grader.symbolic_frac=0.05", "grader.workers=1",
                                       f"output_dir={tmp_path}"]))
    assert results["answers"] == 60 and sum(results["reasons"].values()) == 60 and results["workers"] == 1
    assert json.loads((tmp_path / "bench.json").read_text())["answers"] == 60


def test_logits_bench_measures_each_chunk_setting_in_its_own_process_and_the_losses_agree(tmp_path):
    results = run(load_config(Config, ["which=logits", "logits.vocab=600", "logits.hidden=32", "logits.layers=1",
                                       "logits.rows=2", "logits.length=24", "logits.chunks=[0,7]",
                                       f"output_dir={tmp_path}"]))
    assert [r["chunk"] for r in results["rows"]] == [0, 7] and results["losses_agree"]
    assert all(r["peak_mb"] > 0 and r["seconds"] > 0 for r in results["rows"])
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][1]["chunk"] == 7
    from reasonloop.bench.logits import _ratio

    assert (_ratio(2.0, 4.0), _ratio(1.0, 0.0)) == ("0.50x", "n/a")  # a run too small to lift the peak: no ratio


def test_sandbox_bench_runs_its_four_rows(tmp_path):
    results = run(load_config(Config, ["which=sandbox", "sandbox.n=2", "sandbox.n_slow=1", "sandbox.workers=1",
                                       "sandbox.allow_unisolated=true", f"output_dir={tmp_path}"]))
    rows = results["rows"]
    assert [(r["program"], r["workers"], r["runs"]) for r in rows] == [
        ("trivial", 1, 2), ("trivial", 1, 2), ("sleep_1s", 1, 1), ("busy_1s", 1, 1)]
    assert all(r["all_ok"] for r in rows)


def test_profiled_steps_leave_the_console_alone(capfd):
    """torch's C++ profiler writes `USDT: ... profiler_start/stop` to file descriptor 2; the bench's profiled
    calls keep it off the console and still record the matrix multiplies."""
    import torch

    from reasonloop.bench.timing import recorded_gemms

    gemms = recorded_gemms(lambda: torch.mm(torch.randn(4, 8), torch.randn(8, 2)))
    assert gemms == [("aten::mm", [[4, 8], [8, 2]], torch.float32)]
    out, err = capfd.readouterr()
    assert "USDT" not in err + out and "profiler_st" not in err + out


def test_the_threads_bench_renames_both_op_namespaces_of_its_serial_copies(tmp_path):
    """bench/threads.py loads a serial build of both extensions beside the real ones: every op name renamed,
    the decode step calling the serial kernel's op, nothing else changed."""
    from reasonloop.bench import threads
    from reasonloop.rollout import fused, ternary

    decode, kernel = threads.serial_sources(tmp_path)
    d, k = decode.read_text(), kernel.read_text()
    assert "TORCH_LIBRARY(reasonloop_serial_decode, m)" in d and "TORCH_LIBRARY(reasonloop_decode," not in d
    assert '"reasonloop_serial_ternary::ternary_linear"' in d and '"reasonloop_ternary::' not in d
    assert "TORCH_LIBRARY(reasonloop_serial_ternary, m)" in k and "TORCH_LIBRARY(reasonloop_ternary," not in k
    assert d.replace("reasonloop_serial_", "reasonloop_") == fused._SOURCE.read_text()
    assert k.replace("reasonloop_serial_", "reasonloop_") == ternary._SOURCE.read_text()
    with pytest.raises(ValueError, match="no longer has the op names"):
        threads.serial_decode_text("TORCH_LIBRARY(other, m) {}")
