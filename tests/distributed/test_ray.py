"""The Ray actor-learner on a local Ray instance (CPU actors, the nano model): sync mode gives the single-process
numbers, async mode bounds and logs staleness, dead workers are replaced and a dead learner resumes."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray actor-learner needs the `ray` extra (pip install 'reasonloop[ray]')")

from reasonloop.config import ConfigError, load_config  # noqa: E402
from reasonloop.distributed.ray_learner import ActorLearner  # noqa: E402
from reasonloop.recipes import rl  # noqa: E402

HERE = Path(__file__).resolve().parent
COMPARED = ("reward/mean", "loss", "grad_norm", "kl", "entropy", "length/mean")


@pytest.fixture(scope="module")
def hold_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hold") / "hold"


@pytest.fixture(scope="module", autouse=True)
def local_ray(hold_file):
    path = os.pathsep.join([str(HERE), str(HERE.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, "LETTER_REWARD_HOLD": str(hold_file)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def args(model_dir, out, *extra):
    return [f"model.name={model_dir}", f"output_dir={out}", "steps=3", "prompts_per_step=4", "group_size=4",
            "sampling.max_new_tokens=8", "eval_n=8", "eval_k=0", "eval_every=0", "save_every=0", "samples_every=0",
            "train_pool=32", "micro_batch_size=8", "threads=1", "optim.warmup_steps=0", "optim.lr=0.003",
            "task_rewards=false", "reward_funcs=[letter_reward:letter_first]",
            "distributed.ray.cpus_per_worker=0", "distributed.ray.learner_cpus=0", *extra]


def rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture
def letter_reward_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def test_sync_mode_gives_the_single_process_numbers(nano_model_dir, tmp_path, letter_reward_importable):
    single = rl.Trainer(load_config(rl.Config, args(nano_model_dir, tmp_path / "single", "steps=2"))).train()
    remote = rl.run(load_config(rl.Config, args(nano_model_dir, tmp_path / "ray", "steps=2", "distributed.backend=ray",
                                                "distributed.ray.reward_workers=2")))
    a, b = rows(tmp_path / "single"), rows(tmp_path / "ray")
    assert len(a) == len(b) == 2
    assert any(r["reward/mean"] > 0 for r in a), "the toy reward must be earned"
    for x, y in zip(a, b):
        for key in COMPARED:
            assert y[key] == x[key], (x["step"], key)
        assert y["rollout/staleness"] == 0
    assert remote["after"] == single["after"] and remote["before"] == single["before"]


# slow (a torchrun run of 2 ranks, then Ray with 2 learners: the suite's most expensive test); CI runs it
@pytest.mark.slow
@pytest.mark.ci
def test_two_learner_ranks_train_as_two_torchrun_ranks(nano_model_dir, tmp_path, letter_reward_importable):
    """distributed.ray.learners=2: two learner actors in one gloo group, each with its own rollout worker (the
    rank's sampler RNG travels to it), give the numbers of `torchrun --nproc_per_node=2` on the same config."""
    import subprocess
    import sys

    common = ("steps=2", "distributed.strategy=ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1] / "src")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "reasonloop", "train", *args(nano_model_dir, tmp_path / "torchrun", *common)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = rl.run(load_config(rl.Config, args(nano_model_dir, tmp_path / "ray", *common, "distributed.backend=ray",
                                                "distributed.ray.learners=2")))
    a, b = rows(tmp_path / "torchrun"), rows(tmp_path / "ray")
    assert [r["step"] for r in b] == [1, 2]
    assert any(r["reward/mean"] > 0 for r in a), "the toy reward must be earned"
    for x, y in zip(a, b):
        for key in COMPARED:
            assert y[key] == pytest.approx(x[key], rel=1e-6, abs=1e-9), (x["step"], key)
    assert result["after"]["overall"]["n"] == 8


def test_async_mode_overlaps_and_logs_bounded_staleness(nano_model_dir, tmp_path, letter_reward_importable):
    out = tmp_path / "async"
    result = rl.run(load_config(rl.Config, args(nano_model_dir, out, "steps=3", "distributed.backend=ray",
                                                "distributed.ray.mode=async", "distributed.ray.max_staleness=1",
                                                "tis_cap=2.0")))
    staleness = [r["rollout/staleness"] for r in rows(out)]
    assert staleness == [0.0, 1.0, 1.0], "step 1 waits; every later batch was sampled one update behind"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows(out))
    assert result["after"]["overall"]["n"] == 8


@pytest.mark.slow  # the suite keeps async mode (one learner) and two learner ranks (sync) each in its own test
def test_async_mode_with_two_learner_ranks(nano_model_dir, tmp_path, letter_reward_importable):
    """learners=2 in async mode: each rank looks ahead on its own shard; every batch after the first is one
    update behind on both ranks (rank 0 logs; the loss is the global batch's), and the run trains and evaluates."""
    out = tmp_path / "async2"
    result = rl.run(load_config(rl.Config, args(nano_model_dir, out, "steps=3", "distributed.backend=ray",
                                                "distributed.ray.mode=async", "distributed.ray.max_staleness=1",
                                                "distributed.ray.learners=2", "tis_cap=2.0")))
    logged = rows(out)
    assert [r["rollout/staleness"] for r in logged] == [0.0, 1.0, 1.0]
    assert [r["rollout/weights_version"] for r in logged] == [1.0, 2.0, 3.0]  # updates so far, logged after each
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged) and logged[-1]["grad_norm"] > 0
    assert result["after"]["overall"]["n"] == 8


def test_async_mode_requires_the_importance_correction(nano_model_dir, tmp_path):
    cfg = load_config(rl.Config, args(nano_model_dir, tmp_path, "distributed.backend=ray",
                                      "distributed.ray.mode=async"))
    with pytest.raises(ConfigError, match="set tis_cap"):
        rl.run(cfg)


def test_multi_turn_episodes_are_refused_before_ray_starts(nano_model_dir, tmp_path):
    cfg = load_config(rl.Config, args(nano_model_dir, tmp_path, "distributed.backend=ray", "agent.env=tools"))
    with pytest.raises(ConfigError, match="single-turn completions only"):
        rl.run(cfg)


def run_in_thread(cfg) -> tuple[ActorLearner, threading.Thread, dict]:
    driver = ActorLearner(cfg, rl.Trainer)
    driver.start()
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=driver.run()), daemon=True)
    thread.start()
    return driver, thread, box


def wait_for_step(out: Path, step: int, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if (out / "metrics.jsonl").is_file() and any(r["step"] >= step for r in rows(out)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} within {timeout} s")


def test_killed_rollout_and_reward_workers_are_replaced(nano_model_dir, tmp_path, letter_reward_importable,
                                                         hold_file):
    """The run is held inside step 1's reward call (after its rollout), both workers are killed there, and
    the run is let go: the reward call is re-issued on a replacement, step 2's rollout finds its worker dead
    and replaces it, and the run finishes every step."""
    out = tmp_path / "faults"
    hold_file.touch()
    waiting = Path(f"{hold_file}.waiting")
    waiting.unlink(missing_ok=True)
    driver, thread, box = run_in_thread(load_config(rl.Config, args(
        nano_model_dir, out, "steps=2", "distributed.backend=ray", "reward_funcs=[letter_reward:letter_first_held]")))
    end = time.time() + 600  # generous: a loaded machine takes minutes to start the actors
    while not waiting.exists():
        assert time.time() < end, "the run never reached step 1's reward call"
        time.sleep(0.1)
    actors = ray.get(driver.learner.actors.remote())
    ray.kill(actors["rollout"][0])
    ray.kill(actors["reward"][0])
    hold_file.unlink()
    thread.join(timeout=180)
    assert "result" in box, "the run finishes"
    assert [r["step"] for r in rows(out)] == [1, 2]
    first, last = rows(out)[0], rows(out)[-1]
    assert first["reward_worker_restarts"] == 1 and first["rollout/worker_restarts"] == 0  # killed mid-step 1
    assert last["rollout/worker_restarts"] == 1 and last["reward_worker_restarts"] == 1


@pytest.mark.slow
def test_a_killed_learner_resumes_to_the_uninterrupted_state(nano_model_dir, tmp_path, letter_reward_importable):
    extra = ("steps=4", "save_every=2", "distributed.backend=ray")
    straight = rl.run(load_config(rl.Config, args(nano_model_dir, tmp_path / "straight", *extra)))
    out = tmp_path / "killed"
    driver, thread, box = run_in_thread(load_config(rl.Config, args(nano_model_dir, out, *extra)))
    wait_for_step(out, 3)  # past the step-2 checkpoint
    ray.kill(driver.learner)
    thread.join(timeout=240)
    assert driver.restarts == 1 and "result" in box
    from safetensors.torch import load_file

    a = load_file(str(Path(straight["model_dir"]) / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0, msg=name)
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
