"""Task registry: `task=NAME` or `task=NAME:ARG` in any recipe config.

Each entry names a factory `factory(arg: str | None, data_dir: str | None) -> Task`, imported lazily
so optional dependencies (reasoning-gym, ...) load only when their task is asked for.
"""

from __future__ import annotations

import difflib
import importlib

from reasonloop.errors import UserError
from reasonloop.tasks.base import Task

TASKS: dict[str, str] = {
    "arithmetic": "reasonloop.tasks.arithmetic:make_task",
    "gsm8k": "reasonloop.tasks.math_datasets:make_gsm8k",
    "math": "reasonloop.tasks.math_datasets:make_math",
    "math500": "reasonloop.tasks.math_datasets:make_math500",
    "aime": "reasonloop.tasks.math_datasets:make_aime",
    "amc": "reasonloop.tasks.math_datasets:make_amc",
    "jsonl": "reasonloop.tasks.tabular:make_task",
    "parquet": "reasonloop.tasks.tabular:make_task",
    "dataset": "reasonloop.tasks.tabular:make_task",
    "reasoning_gym": "reasonloop.tasks.reasoning_gym:make_task",
    "mbpp": "reasonloop.tasks.code:make_mbpp",
    "humaneval": "reasonloop.tasks.code:make_humaneval",
    "apps": "reasonloop.tasks.code:make_apps",
    "codecontests": "reasonloop.tasks.code:make_codecontests",
    "code_arith": "reasonloop.tasks.code:make_code_arith",
    "tool_arith": "reasonloop.tasks.tool_arith:make_task",
    "mix": "reasonloop.tasks.mixture:make_task",
    "ruled_arithmetic": "reasonloop.tasks.ruled:make_task",
}


class TaskError(UserError):
    """An unknown task name or a task that cannot be built from its arguments."""


def make_task(spec: str, data_dir: str | None = None) -> Task:
    name, _, arg = spec.partition(":")
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1, cutoff=0.0)
        raise TaskError(f"unknown task {name!r}; known: {sorted(TASKS)}" + (f"; did you mean {close[0]!r}?" if close else ""))
    module, _, attr = TASKS[name].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(arg or None, data_dir)
