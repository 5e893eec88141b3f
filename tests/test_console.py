"""The main command's console holds our output only: no third-party warnings or progress bars."""

import os
import re
import subprocess
from pathlib import Path

from reasonloop.console import QUIET_ENV

ROOT = Path(__file__).resolve().parents[1]
NOISE = re.compile(r"warn|deprecat|Loading weights|Writing model shards|it/s\]", re.I)
TINY = ["steps=2", "eval_n=8", "eval_k=0", "prompts_per_step=4", "group_size=4", "save_every=0"]


def run_train(tmp_path, *extra):
    # the environment a user's shell has: not what an in-process CLI test's quiet_libraries() left in this one
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    out = subprocess.run([str(ROOT / "dev.sh"), "train", *TINY, f"output_dir={tmp_path / 'run'}", *extra],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout + out.stderr


def test_dev_sh_train_prints_no_warning_lines(tmp_path):
    text = run_train(tmp_path)
    assert "after 2 steps (grpo):" in text and "overall" in text
    assert not [line for line in text.splitlines() if NOISE.search(line)], text


def test_verbose_brings_the_libraries_back(tmp_path):
    # transformers' "Loading weights" / "Writing model shards" bars (it used to be a deprecation warning of
    # ours, since fixed: the test must not depend on a bug being there)
    assert NOISE.search(run_train(tmp_path, "--verbose"))
