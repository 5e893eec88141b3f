"""Task registry: `task=NAME` or `task=NAME:ARG` in any recipe config.

Each entry names a factory `factory(arg: str | None, data_dir: str | None) -> Task`, imported lazily
so optional dependencies (reasoning-gym, ...) load only when their task is asked for.
"""

from __future__ import annotations

import difflib
import importlib

from reasonloop.data.tasks.base import Task

TASKS: dict[str, str] = {
    "arithmetic": "reasonloop.data.tasks.arithmetic:make_task",
    "mbpp": "reasonloop.data.tasks.code:make_mbpp",
    "humaneval": "reasonloop.data.tasks.code:make_humaneval",
    "code_arith": "reasonloop.data.tasks.code:make_code_arith",
}


class TaskError(ValueError):
    """An unknown task name or a task that cannot be built from its arguments."""


def make_task(spec: str, data_dir: str | None = None) -> Task:
    name, _, arg = spec.partition(":")
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1, cutoff=0.0)
        raise TaskError(f"unknown task {name!r}; known: {sorted(TASKS)}" + (f"; did you mean {close[0]!r}?" if close else ""))
    module, _, attr = TASKS[name].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(arg or None, data_dir)
