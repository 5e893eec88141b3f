"""Our commands own the console: third-party warnings and progress bars stay out of it unless asked for.

`quiet_libraries()` runs once per command (from the CLI) before any library is used:
- transformers', huggingface_hub's and datasets' progress bars ("Loading weights", "Writing model shards")
  are turned off: reasonloop shows one progress bar per stage itself;
- their loggers are set to errors only (e.g. transformers' "`past_key_values` is deprecated" notice),
  and Python warnings of the deprecation/future kinds raised inside third-party code are ignored.
reasonloop's own log lines (`reasonloop.*` loggers: stage messages, monitor alerts, counted skips) are
untouched. `--verbose` (or `REASONLOOP_VERBOSE=1`) leaves everything as the libraries set it.
"""

from __future__ import annotations

import logging
import os
import warnings

THIRD_PARTY = ("transformers", "torch", "peft", "datasets", "huggingface_hub", "accelerate", "trl", "omegaconf",
               "wandb", "mlflow", "alembic", "trackio", "openai", "httpx", "httpx2", "vllm")


# environment variables `quiet_libraries` sets (child processes inherit them: sandbox and grader workers, ranks)
QUIET_ENV = {"TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "MLFLOW_LOGGING_LEVEL": "ERROR",  # mlflow sets its logger's level when imported
             "WANDB_QUIET": "true"}  # W&B: where the run is, not its history tables


def verbose_requested(argv: list[str]) -> bool:
    return "--verbose" in argv or os.environ.get("REASONLOOP_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """Silence third-party progress bars, log chatter and deprecation warnings (see the module docstring)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        for package in THIRD_PARTY:
            warnings.filterwarnings("ignore", category=category, module=rf"{package}(\.|$)")
    for package in THIRD_PARTY:
        logging.getLogger(package).setLevel(logging.ERROR)
    try:
        import transformers.utils.logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
