"""Run one untrusted program under hard limits, in the strongest isolation available.

Design choices (see docs/sandbox.md):

- No `preexec_fn` and no `Popen(user=...)`: privilege drop (`setpriv`) and rlimits (`prlimit`) are
  exec wrappers, so CPython can spawn with vfork and the cost of a launch does not grow with the
  size of the calling process (a trainer with torch loaded), and launching from threads is safe.
- rlimits are applied *inside* the user namespace, where the kernel counts RLIMIT_NPROC per
  namespace, so a fork bomb in one run cannot starve concurrent runs of processes.
- The program is pid 1 of its pid namespace (`--as-pid-1`), so bwrap reaps it directly and its CPU
  time reaches us through `wait4`; pid 1 ignores SIGXCPU, hence soft == hard CPU limit (SIGKILL) there.
  When it exits or is killed, the kernel kills every other process in the namespace.
- stdin/stdout/stderr and the program file are memfds: nothing touches the host disk at the
  namespaces level, RLIMIT_FSIZE caps output at the source, and nothing survives the run.
- Each concurrent run gets its own uid (when we are root), machine-wide (a `flock`ed slot, see `_Slots`), so
  the rlimits-level teardown `kill -9 -1` as that uid reaps exactly that run's leftovers, even processes that
  left the session, and never another process's run.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from reasonloop.errors import UserError
from reasonloop.sandbox.isolation import (
    DEFAULT_UID_BASE, NAMESPACES, NONE, Isolation, detect, privilege_drop, usr_mounts)
from reasonloop.sandbox.records import ExecResult, Limits

SCRATCH = "/sandbox"  # the program's working directory inside the namespace
COMPILE_ERROR_MARK = "__reasonloop_compile_error__"
MEMORY_MARKS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")
CPU_KILL_FRACTION = 0.9  # rusage lags the kernel's RLIMIT_CPU accounting by a tick
SYNTAX_MARKS = ("SyntaxError:", "IndentationError:", "TabError:")


ALLOW_UNISOLATED_ENV = "REASONLOOP_ALLOW_UNISOLATED"  # "1": accept rlimits-only isolation (see Sandbox)


class IsolationError(UserError, RuntimeError):
    """The machine cannot isolate untrusted code well enough for the caller's policy."""


@dataclass(frozen=True)
class Program:
    """How to run one language: the source file name and the command, relative to the scratch dir."""

    filename: str
    argv: tuple[str, ...]


def default_python() -> str:
    """The system interpreter: it lives under /usr (visible in the namespace) and is world-readable,
    unlike a virtualenv under /root; user code needs the standard library only."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3") or "python3"


def programs(python: str) -> dict[str, Program]:
    # gcc runs inside the sandbox too: compiling untrusted C (#include "/etc/shadow") is untrusted.
    c_script = (f"gcc -O2 -std=gnu11 -o main main.c -lm </dev/null || "
                f"{{ echo {COMPILE_ERROR_MARK} >&2; exit 1; }}; exec ./main")
    return {
        "python": Program("main.py", (python, "-I", "-B", "main.py")),
        "c": Program("main.c", ("/bin/sh", "-c", c_script)),
    }


class _Slots:
    """Small integers for concurrent runs, machine-wide: slot k (uid `uid_base + k`) is held through an exclusive
    `flock` on its lock file, so no two runs share a uid, whichever process or `Sandbox` starts them (the
    rlimits level's teardown, `kill -9 -1` as the run's uid, would otherwise kill another run's program, and
    RLIMIT_NPROC would count both). The lowest free slot is taken; it is free again when its run ends."""

    def __init__(self, uid_base: int, lock_dir: str | None = None) -> None:
        self.uid_base = uid_base
        self.lock_dir = lock_dir or os.path.join(tempfile.gettempdir(), f"reasonloop-sandbox-{os.getuid()}")

    @contextmanager
    def take(self) -> Iterator[int]:
        os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)  # the caller's alone: a run cannot touch the locks
        if os.stat(self.lock_dir).st_uid != os.getuid():
            raise IsolationError(f"{self.lock_dir} (the sandbox's uid locks) belongs to another user; remove it")
        slot = 0
        while True:
            fd = os.open(os.path.join(self.lock_dir, f"uid-{self.uid_base + slot}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # held by a run of this or another process
                os.close(fd)
                slot += 1
        try:
            yield slot
        finally:
            os.close(fd)  # releases the lock


class Sandbox:
    """`Sandbox(limits).run(code, stdin, language) -> ExecResult`; thread-safe, one run per call.

    Refuses to construct unless namespace isolation works, or the caller opts in to weaker isolation
    with `allow_unisolated=True` (rlimits, scratch dir, scrubbed env and uid drop, but host files and
    the network stay reachable). Where the sandbox is built for you (the code tasks' rewards under
    `reasonloop train`), the environment variable REASONLOOP_ALLOW_UNISOLATED=1 is the same opt-in.
    """

    def __init__(self, limits: Limits | None = None, *, allow_unisolated: bool = False,
                 python: str | None = None, uid_base: int = DEFAULT_UID_BASE) -> None:
        self.limits = limits or Limits()
        self.iso: Isolation = detect(uid_base)
        if self.iso.level == NONE:
            raise IsolationError(f"cannot set resource limits: {self.iso.reason}")
        allow_unisolated = allow_unisolated or os.environ.get(ALLOW_UNISOLATED_ENV) == "1"
        if self.iso.level != NAMESPACES and not allow_unisolated:
            raise IsolationError(
                f"no namespace isolation ({self.iso.reason}); install bubblewrap "
                f"(apt-get install -y bubblewrap), or accept rlimits only: allow_unisolated=True in Python, "
                f"{ALLOW_UNISOLATED_ENV}=1 in the environment for training and evaluation commands")
        self.uid_base = uid_base
        self.programs = programs(python or default_python())
        self._slots = _Slots(uid_base)

    def isolation_level(self) -> str:
        return self.iso.level

    def run(self, code: str, stdin: str = "", language: str = "python",
            limits: Limits | None = None) -> ExecResult:
        if language not in self.programs:
            raise ValueError(f"unsupported language {language!r}; known: {sorted(self.programs)}")
        program, lim = self.programs[language], limits or self.limits
        with self._slots.take() as slot, _Streams(code, stdin) as io:
            uid = self.uid_base + slot
            if self.iso.level == NAMESPACES:
                return self._run_namespaced(program, io, lim, uid)
            return self._run_rlimited(program, io, lim, uid)

    # -- launchers -----------------------------------------------------------------------------------

    def _drop(self, uid: int) -> list[str]:
        return privilege_drop(self.iso.setpriv, uid) if self.iso.drops_privileges else []

    def _rlimits(self, lim: Limits, pid1: bool) -> list[str]:
        # pid 1 of a namespace is spared SIGXCPU: soft == hard, SIGKILL at the limit. Otherwise soft < hard: the
        # soft limit's SIGXCPU names the cause (a runaway is a timeout, whatever rusage reads under load, where it
        # can lag the kernel's accounting past CPU_KILL_FRACTION); one that ignores SIGXCPU dies a second later
        hard = lim.cpu_time_s if pid1 else lim.cpu_time_s + 1
        return [self.iso.prlimit, f"--cpu={lim.cpu_time_s}:{hard}",
                f"--as={lim.memory_mb << 20}", f"--nproc={lim.max_processes}",
                f"--nofile={lim.max_open_files}", f"--fsize={lim.max_output_bytes + 1}", "--core=0", "--"]

    def _run_namespaced(self, program: Program, io: "_Streams", lim: Limits, uid: int) -> ExecResult:
        size = str(lim.scratch_mb << 20)
        argv = self._drop(uid) + [
            self.iso.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1",
            *usr_mounts(), "--proc", "/proc", "--dev", "/dev",
            "--size", size, "--tmpfs", SCRATCH, "--size", size, "--tmpfs", "/tmp",
            "--size", size, "--tmpfs", "/dev/shm",
            "--file", str(io.code), f"{SCRATCH}/{program.filename}",
            # read-only root and /dev: their tmpfs have no size cap (device nodes stay writable)
            "--remount-ro", "/dev", "--remount-ro", "/",
            "--chdir", SCRATCH, "--hostname", "sandbox", "--clearenv",
            *[a for k, v in _env(SCRATCH).items() for a in ("--setenv", k, v)],
            "--json-status-fd", str(io.status),
            "--", *self._rlimits(lim, pid1=True), *program.argv]
        res = _execute(argv, io, lim, cwd="/", env={}, wrapped_signals=True)
        return _finish(res, io, lim, self.iso.level)

    def _run_rlimited(self, program: Program, io: "_Streams", lim: Limits, uid: int) -> ExecResult:
        scratch = tempfile.mkdtemp(prefix="reasonloop-sbx-")
        try:
            path = os.path.join(scratch, program.filename)
            with open(path, "wb") as f:
                f.write(os.pread(io.code, os.fstat(io.code).st_size, 0))
            if self.iso.drops_privileges:
                os.chown(scratch, uid, uid)
                os.chown(path, uid, uid)
            argv = self._drop(uid) + self._rlimits(lim, pid1=False) + list(program.argv)
            res = _execute(argv, io, lim, cwd=scratch, env=_env(scratch), wrapped_signals=False)
            if self.iso.drops_privileges:  # reap daemonised leftovers: everything this uid runs
                subprocess.run(self._drop(uid) + ["kill", "-9", "-1"], env={}, capture_output=True)
            return _finish(res, io, lim, self.iso.level)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _env(home: str) -> dict[str, str]:
    """The whole environment the program sees: nothing of the host's (tokens, paths) leaks in."""
    return {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1"}


class _Streams:
    """memfds for the code, stdin, stdout, stderr and bwrap's status; closed on exit."""

    def __init__(self, code: str, stdin: str) -> None:
        self.code = _memfd("code", code.encode())
        self.stdin = _memfd("stdin", stdin.encode())
        self.stdout, self.stderr, self.status = (_memfd(n, b"") for n in ("stdout", "stderr", "status"))

    def __enter__(self) -> "_Streams":
        return self

    def __exit__(self, *exc) -> None:
        for fd in (self.code, self.stdin, self.stdout, self.stderr, self.status):
            os.close(fd)

    def read(self, fd: int, limit: int) -> tuple[bytes, int]:
        """(first `limit` bytes, total size)."""
        return os.pread(fd, limit, 0), os.fstat(fd).st_size


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"reasonloop-{name}")
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass(frozen=True)
class _Raw:
    exit_code: int | None
    signal: int | None
    timed_out: bool
    wall_time: float
    cpu_time: float
    max_rss_kb: int


def _execute(argv: list[str], io: _Streams, lim: Limits, *, cwd: str, env: dict[str, str],
             wrapped_signals: bool) -> _Raw:
    """Spawn in a new session, wait up to the wall limit on a pidfd, SIGKILL the group, reap.

    `wrapped_signals`: bwrap reports a signal death of its child as exit code 128+signal.
    """
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=io.stdin, stdout=io.stdout, stderr=io.stderr,
                            pass_fds=(io.code, io.status), start_new_session=True, cwd=cwd, env=env)
    timed_out = not _wait(proc.pid, lim.wall_limit())
    if timed_out:
        os.killpg(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from re-waiting
    code, sig = (proc.returncode, None) if proc.returncode >= 0 else (None, -proc.returncode)
    if wrapped_signals and code is not None and code > 128:
        code, sig = None, code - 128
    return _Raw(code, sig, timed_out, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


def _wait(pid: int, timeout: float) -> bool:
    """True when `pid` exited within `timeout`; a pidfd wakes us at once (Popen.wait polls)."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _finish(raw: _Raw, io: _Streams, lim: Limits, level: str) -> ExecResult:
    out, out_size = io.read(io.stdout, lim.max_output_bytes)
    err, err_size = io.read(io.stderr, lim.max_output_bytes)
    stderr = err.decode(errors="replace")
    started = level != NAMESPACES or b'"exit-code"' in os.pread(io.status, 1 << 16, 0)
    status = _classify(raw, started, max(out_size, err_size) > lim.max_output_bytes, stderr, lim)
    return ExecResult(status=status, exit_code=raw.exit_code, signal=raw.signal,
                      stdout=out.decode(errors="replace"), stderr=stderr, wall_time=round(raw.wall_time, 4),
                      cpu_time=round(raw.cpu_time, 4), max_rss_kb=raw.max_rss_kb, isolation=level)


def _classify(raw: _Raw, started: bool, over_output: bool, stderr: str, lim: Limits) -> str:
    """Map how the run ended to one status; the first matching cause wins."""
    if raw.timed_out or raw.signal == signal.SIGXCPU or (
            raw.signal == signal.SIGKILL and raw.cpu_time >= CPU_KILL_FRACTION * lim.cpu_time_s):
        return "timeout"  # checked first: a killed bwrap never writes its exit-code status
    if not started:
        return "sandbox_error"
    if over_output or raw.signal == signal.SIGXFSZ:
        return "output_limit"
    if raw.exit_code == 0:
        return "ok"
    if COMPILE_ERROR_MARK in stderr:
        return "compile_error"
    tail = stderr[-2000:]
    if any(m in tail for m in MEMORY_MARKS):
        return "memory"
    if "Traceback (most recent call last)" not in stderr and any(m in tail for m in SYNTAX_MARKS):
        return "syntax_error"
    return "killed" if raw.signal is not None else "runtime_error"


def isolation_level(uid_base: int = DEFAULT_UID_BASE) -> str:
    """The strongest isolation this machine offers (what a default `Sandbox` would use)."""
    return detect(uid_base).level

