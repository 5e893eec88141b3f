"""Sandbox throughput: `python -m reasonloop.sandbox.bench [--n N] [--workers W]`.

Reports executions per second for a trivial program (launch overhead dominates), a program that
sleeps 1 s (concurrency dominates: workers are not CPU-bound) and one that busy-loops 1 s (the
cores dominate).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass

from reasonloop.sandbox.pool import Job, SandboxPool
from reasonloop.sandbox.records import Limits
from reasonloop.sandbox.runner import Sandbox

PROGRAMS = {
    "trivial": "print(sum(range(10)))",
    "sleep_1s": "import time\ntime.sleep(1)",
    "busy_1s": "import time\nt = time.process_time()\nwhile time.process_time() - t < 1: pass",
}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reasonloop.sandbox.bench", description=__doc__)
    parser.add_argument("--n", type=int, default=64, help="runs of the trivial program")
    parser.add_argument("--n-slow", type=int, default=16, help="runs of each 1-second program")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="concurrent runs")
    parser.add_argument("--allow-unisolated", action="store_true", help="bench without namespaces")
    args = parser.parse_args(argv)
    sandbox = Sandbox(Limits(wall_time_s=10, cpu_time_s=5), allow_unisolated=args.allow_unisolated)
    print(f"isolation: {sandbox.iso.describe()}; cpus: {os.cpu_count()}")
    rows = [bench_one(sandbox, "trivial", args.n, 1), bench_one(sandbox, "trivial", args.n, args.workers),
            bench_one(sandbox, "sleep_1s", args.n_slow, args.n_slow),
            bench_one(sandbox, "busy_1s", args.n_slow, args.workers)]
    for row in rows:
        print(json.dumps(asdict(row)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
