"""Sandbox throughput (`reasonloop bench which=sandbox [sandbox.n=N] [sandbox.workers=W]`).

Reports executions per second for a trivial program (launch overhead dominates), a program that
sleeps 1 s (concurrency dominates: workers are not CPU-bound) and one that busy-loops 1 s (the
cores dominate).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

from reasonloop.config import require
from reasonloop.sandbox.pool import Job, SandboxPool
from reasonloop.sandbox.records import Limits
from reasonloop.sandbox.runner import Sandbox

PROGRAMS = {
    "trivial": "print(sum(range(10)))",
    "sleep_1s": "import time\ntime.sleep(1)",
    "busy_1s": "import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass",
}


@dataclass
class SandboxBenchConfig:
    n: int = 64
    """Runs of the trivial program (on one worker, then on `workers`)."""
    n_slow: int = 16
    """Runs of each 1-second program (the sleeping one on n_slow workers, the busy one on `workers`)."""
    workers: int = 0
    """Concurrent runs; 0 means one per CPU core."""
    allow_unisolated: bool = False
    """Bench without namespaces when bubblewrap is unavailable (rlimits and a scratch directory only)."""

    def __post_init__(self):
        require(self.n > 0 and self.n_slow > 0, "sandbox.n and sandbox.n_slow must be > 0")
        require(self.workers >= 0, "sandbox.workers must be >= 0")


@dataclass(frozen=True)
class BenchRow:
    program: str
    workers: int
    runs: int
    seconds: float
    executions_per_s: float
    all_ok: bool


def bench_one(sandbox: Sandbox, name: str, runs: int, workers: int) -> BenchRow:
    jobs = [Job(PROGRAMS[name])] * runs
    with SandboxPool(sandbox, workers) as pool:
        pool.run_many(jobs[:workers])  # warm-up: page cache, isolation probe
        start = time.perf_counter()
        results = pool.run_many(jobs)
        seconds = time.perf_counter() - start
    return BenchRow(name, workers, runs, round(seconds, 3), round(runs / seconds, 2),
                    all(r.ok for r in results))


def run(cfg: SandboxBenchConfig) -> dict:
    """The four rows (trivial on 1 and on `workers` workers, sleeping, busy); prints and returns them."""
    workers = cfg.workers or os.cpu_count() or 1
    sandbox = Sandbox(Limits(wall_time_s=10, cpu_time_s=5), allow_unisolated=cfg.allow_unisolated)
    print(f"isolation: {sandbox.iso.describe()}; cpus: {os.cpu_count()}")
    rows = [bench_one(sandbox, "trivial", cfg.n, 1), bench_one(sandbox, "trivial", cfg.n, workers),
            bench_one(sandbox, "sleep_1s", cfg.n_slow, cfg.n_slow),
            bench_one(sandbox, "busy_1s", cfg.n_slow, workers)]
    for row in rows:
        print(json.dumps(asdict(row)))
    return {"isolation": sandbox.iso.describe(), "rows": [asdict(row) for row in rows]}
