"""Many sandbox runs at once: a thread pool of launches.

Threads suffice because every run is a separate process tree; a thread only spawns (vfork, no
`preexec_fn`) and then sleeps on a pidfd with the GIL released. Pre-forked Python workers would add
IPC without saving anything: launch cost is bubblewrap + interpreter start-up, not our fork.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from reasonloop.sandbox.records import ExecResult, Limits
from reasonloop.sandbox.runner import Sandbox


@dataclass(frozen=True)
class Job:
    code: str
    stdin: str = ""
    language: str = "python"
    limits: Limits | None = None  # None: the sandbox's limits


class SandboxPool:
    """`SandboxPool(sandbox, workers).run_many(jobs)`: results in job order.

    `workers` defaults to the CPU count: CPU-bound programs gain nothing from more, and each run
    is already capped in processes and memory, so workers x limits bounds the whole pool.
    """

    def __init__(self, sandbox: Sandbox, workers: int | None = None) -> None:
        self.sandbox = sandbox
        self.workers = workers or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox")

    def run_many(self, jobs: Sequence[Job]) -> list[ExecResult]:
        futures = [self._executor.submit(self.sandbox.run, j.code, j.stdin, j.language, j.limits) for j in jobs]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
