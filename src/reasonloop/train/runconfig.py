"""The run fields every command's config shares: where the run goes, its seed, threads and resume policy.

Every recipe `Config` inherits `RunConfig` (commands that checkpoint inherit `CheckpointedRunConfig`,
which adds `save_every`), so these keys mean the same thing, are validated the same way and are
documented once. The class attributes say which keys a resumed run may change (`RESUME_FREE`: they
do not change what the run computes) and which key counts its progress (`PROGRESS_KEY`), for the
config comparison `train.run.Run` makes before it continues a run (docs/run-directories.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from reasonloop.config import require, require_choice
from reasonloop.train.trackers import parse_logger

RESUME_MODES = ("auto", "never", "force")
SEED_LIMIT = 2**32  # numpy's seed range is [0, 2**32)


@dataclass
class RunConfig:
    output_dir: str = ""
    """Run directory; empty means runs/<command>-<timestamp> (a new directory, never shared). An existing
    directory must be empty or a reasonloop run of the same command (docs/run-directories.md)."""
    seed: int = 0
    """Seed for data order, sampling and initialisation (0 <= seed < 2**32)."""
    threads: int = 0
    """torch threads; 0 keeps torch's default (use 1 on a CPU shared with other jobs)."""
    resume: str = "auto"
    """What to do when output_dir already holds a run: 'auto' continues it from its latest checkpoint (or
    reruns it from the start when it has none) if the config keys that change results are the same, and
    refuses otherwise, naming them; 'force' continues it under the new config anyway; 'never' refuses any
    existing run (a fresh run needs a new or empty directory)."""

    logger: str = ""
    """Experiment trackers that also receive the metrics (metrics.jsonl always does): any of tensorboard,
    wandb, mlflow, trackio, comma-separated (`logger=tensorboard,wandb`), each needing its library
    (`pip install 'reasonloop[wandb]'`); 'none' for none; empty means TensorBoard when it is installed.
    Where each writes and how to run it offline: docs/report.md."""

    RESUME_FREE: ClassVar[frozenset[str]] = frozenset({"output_dir", "threads", "resume", "logger"})
    """Keys a resumed run may change: they do not change what the run computes."""
    PROGRESS_KEY: ClassVar[str] = ""
    """The key counting the run's progress (steps, iterations): a resume may raise it, not lower it below
    the checkpoint's. Empty for commands without checkpoints."""

    def __post_init__(self):
        require(isinstance(self.seed, int) and 0 <= self.seed < SEED_LIMIT,
                f"seed={self.seed}: must be in [0, {SEED_LIMIT - 1}]")
        require(self.threads >= 0, f"threads={self.threads}: must be >= 0 (0 keeps torch's default)")
        require("\0" not in self.output_dir, "output_dir contains a NUL character")
        require_choice("resume", self.resume, list(RESUME_MODES))
        parse_logger(self.logger)  # a name that is no tracker is a config error


@dataclass
class CheckpointedRunConfig(RunConfig):
    save_every: int = 50
    """Checkpoint every N steps; 0 disables intermediate checkpoints."""

    RESUME_FREE: ClassVar[frozenset[str]] = RunConfig.RESUME_FREE | {"save_every"}
    PROGRESS_KEY: ClassVar[str] = "steps"

    def __post_init__(self):
        super().__post_init__()
        require(self.save_every >= 0, f"save_every={self.save_every}: must be >= 0 (0 disables checkpoints)")
