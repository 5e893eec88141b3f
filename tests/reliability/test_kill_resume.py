"""Kill -9 at random moments, resume, and end with byte-identical weights (slow: minutes).

Each case runs the real command line in a subprocess: once uninterrupted, then again in a fresh
directory where it is killed with SIGKILL at random moments (seeded: the same moments every time;
some land during start-up, some inside checkpoint writes, since every step or iteration is
checkpointed) and restarted with the same command until it finishes. The final weights must be
byte-identical to the uninterrupted run's, and the metrics must hold each step's rows once.

The runs sample with the torch decoder (REASONLOOP_FUSED_DECODE=0): loading the compiled decode step
goes through torch's extension builder, whose lock file a SIGKILL at the wrong moment leaves behind,
and every later process on the machine then waits for it forever. That is the extension loader's
problem, not the run directory's; these tests are about the latter.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reasonloop

pytestmark = pytest.mark.slow

SRC = str(Path(reasonloop.__file__).resolve().parents[1])
MODEL = ["model.name=embedded", "threads=1"]
RL = ["steps=6", "save_every=1", "prompts_per_step=4", "group_size=4", "sampling.max_new_tokens=24", "eval_n=4",
      "eval_k=0", "train_pool=32", "micro_batch_size=16", "samples_every=1", "optim.warmup_steps=0"]
LOOP = ["iterations=3", "prompts_per_iteration=8", "samples_per_prompt=2", "eval_n=4", "sft_max_steps=2", "batch_size=8",
        "micro_batch_size=8", "train_pool=32", "max_new_tokens=24"]
CASES = {
    "grpo": ["train", *RL],
    "ppo": ["ppo", *RL],
    "lora": ["train", *RL, "model.lora.r=4", "optim.lr=0.003"],
    "sft": ["sft", "steps=6", "save_every=1", "batch_size=8", "micro_batch_size=4", "task_records=32", "eval_n=4"],
    "self_train_rft": ["self_train", "method=rft", *LOOP],
    "self_train_star": ["self_train", "method=star", *LOOP],
    "dpo_online": ["dpo", "mode=online", "steps=2", *LOOP],
    "reward_model": ["reward_model", "steps=6", "save_every=1", "prompts=16", "eval_prompts=8", "batch_size=8",
                     "micro_batch_size=8", "max_new_tokens=24"],
}
KILLS = 4


def launch(args: list[str], out: Path) -> subprocess.Popen:
    """The command in a subprocess; its output goes to a log file (a pipe nobody reads would block it)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "REASONLOOP_FUSED_DECODE": "0"}
    log = open(out.parent / f"{out.name}.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "reasonloop.cli", *args, *MODEL, f"output_dir={out}"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    return proc


def finish(proc: subprocess.Popen, timeout: float = 1800) -> None:
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, Path(proc.log_path).read_text()[-3000:]  # type: ignore[attr-defined]


def weights(run: Path) -> dict[str, bytes]:
    files = sorted((run / "model").glob("*.safetensors"))
    assert files, f"no weights in {run / 'model'}"
    return {f.name: f.read_bytes() for f in files}


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_at_random_moments_resumes_to_byte_identical_weights(case, tmp_path):
    args = CASES[case]
    t0 = time.monotonic()
    finish(launch(args, tmp_path / "straight"))
    total = time.monotonic() - t0

    rng = random.Random(case)
    out = tmp_path / "killed"
    landed = 0
    for _ in range(KILLS):
        proc = launch(args, out)
        try:
            proc.wait(timeout=rng.uniform(0.25, 0.95) * total)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed += 1
            continue
        finish(proc)
        break
    else:
        finish(launch(args, out), timeout=10 * total)
    assert landed >= 1, "no kill landed: the case proves nothing"

    assert weights(out) == weights(tmp_path / "straight"), f"{case}: weights differ after {landed} kills"
    straight_rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    killed_rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], sorted(r)) for r in killed_rows] == [(r["step"], sorted(r)) for r in straight_rows]
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((tmp_path / "straight" / "summary.json").read_text())
    for key in ("before", "accuracy_before"):
        assert summary.get(key) == expected.get(key)
