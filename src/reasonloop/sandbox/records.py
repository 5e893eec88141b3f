"""The sandbox's inputs and outputs: resource limits and a JSON-serialisable execution result."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

MAX_WALL_STRETCH = 10.0  # `Limits.wall_limit`: at most this many times wall_time_s, however loaded the machine

# Every status an `ExecResult` can carry. Anything but "ok" means the program failed.
STATUSES = (
    "ok",  # exited 0 within all limits
    "runtime_error",  # exited non-zero (an uncaught exception, sys.exit(1), abort ...)
    "syntax_error",  # Python could not compile the program
    "compile_error",  # gcc rejected the C program
    "timeout",  # wall-clock or CPU-time limit hit
    "memory",  # address-space limit hit (MemoryError / allocation failure)
    "output_limit",  # stdout or stderr exceeded max_output_bytes
    "killed",  # terminated by a signal not explained by a limit above
    "sandbox_error",  # the sandbox itself could not start the program
)


@dataclass(frozen=True)
class Limits:
    """Hard per-run limits. Defaults suit competitive-programming style tests on a small machine.

    Memory is an address-space limit per process; with `max_processes` processes the worst case is
    their product, so keep both small on shared machines.
    """

    wall_time_s: float = 5.0  # wall clock, enforced by the parent with SIGKILL to the whole sandbox
    cpu_time_s: int = 5  # RLIMIT_CPU seconds: SIGKILL when reached (rlimits level: SIGXCPU, SIGKILL a second later)
    memory_mb: int = 512  # RLIMIT_AS per process
    max_processes: int = 16  # RLIMIT_NPROC: processes + threads of this run (per user namespace)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 1 << 20  # per stream; also RLIMIT_FSIZE for any file the program writes
    scratch_mb: int = 32  # size of the tmpfs scratch (namespaces level only)
    load_scaled_wall: bool = True  # stretch wall_time_s on an overloaded machine (see `wall_limit`)

    def __post_init__(self) -> None:
        for name in ("wall_time_s", "cpu_time_s", "memory_mb", "max_processes", "max_open_files",
                     "max_output_bytes", "scratch_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}")

    def wall_limit(self) -> float:
        """The wall-clock seconds a run gets now: `wall_time_s` times the machine's overload (1-minute load
        average per usable core, between 1 and MAX_WALL_STRETCH) when `load_scaled_wall`.

        Why: on an overloaded machine a correct program is starved of CPU, not slow, and was graded a timeout
        (code verdicts moved 3-9 points with the load). A CPU-bound runaway is still stopped by `cpu_time_s`,
        which load does not stretch; only a program that sleeps or blocks gets the longer wall clock."""
        return self.wall_time_s * load_stretch() if self.load_scaled_wall else self.wall_time_s


def load_stretch() -> float:
    """How overloaded the machine is: the 1-minute load average per usable core, clamped to [1, MAX_WALL_STRETCH].
    Wall-clock deadlines for work whose CPU need is bounded otherwise (sandboxed programs, symbolic checks) are
    multiplied by it, so a starved job is not mistaken for a runaway."""
    overload = os.getloadavg()[0] / max(len(os.sched_getaffinity(0)), 1)
    return min(max(overload, 1.0), MAX_WALL_STRETCH)


@dataclass(frozen=True)
class ExecResult:
    status: str  # one of STATUSES
    exit_code: int | None  # process exit code; None when killed by a signal
    signal: int | None  # terminating signal number, if any
    stdout: str  # truncated to max_output_bytes, decoded with errors="replace"
    stderr: str
    wall_time: float  # seconds from launch to reaping
    cpu_time: float  # user + system seconds of the program and its reaped children
    max_rss_kb: int  # peak resident set of the largest process
    isolation: str  # isolation level the run used

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
