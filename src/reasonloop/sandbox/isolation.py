"""Which isolation this machine offers, detected at run time so the code degrades instead of failing.

Levels, strongest first:

- ``namespaces``: bubblewrap puts the program in fresh user, mount, pid, network, ipc and uts
  namespaces. It sees only a read-only ``/usr`` and a small size-capped tmpfs scratch; it has no
  network; when its pid-1 reaper dies the kernel kills everything left in the pid namespace. Rlimits
  (set by ``prlimit`` *inside* the namespace) and an unprivileged uid apply on top.
- ``rlimits``: no namespaces (bubblewrap missing or user namespaces disabled). The program runs in a
  new session, in a fresh scratch directory, with a scrubbed environment, rlimits and -- when we are
  root -- a dedicated unprivileged uid. It *can* still read world-readable host files and open sockets,
  so the `Sandbox` refuses this level unless the caller passes ``allow_unisolated=True``.
- ``none``: ``prlimit``/``setpriv`` (util-linux) are missing, so no limit can be set; never used.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

NAMESPACES, RLIMITS, NONE = "namespaces", "rlimits", "none"

# Per-slot uids when we are root. A high, normally unassigned range: each concurrent run gets its own
# uid, so `kill -9 -1` as that uid reaps exactly that run's leftovers and RLIMIT_NPROC is per run.
DEFAULT_UID_BASE = 1_500_000


@dataclass(frozen=True)
class Isolation:
    level: str  # one of NAMESPACES, RLIMITS, NONE
    bwrap: str | None  # path of bubblewrap when the namespace probe succeeded
    prlimit: str | None
    setpriv: str | None
    drops_privileges: bool  # True when we are root and switch every run to an unprivileged uid
    reason: str  # why this level (and not a stronger one) is active

    def describe(self) -> str:
        uid = "dedicated unprivileged uid per run" if self.drops_privileges else "caller's uid"
        return f"{self.level} ({uid}); {self.reason}"


def usr_mounts() -> list[str]:
    """bwrap arguments that expose the system's programs read-only, mirroring /bin, /lib* symlinks.

    Debian's merged-/usr layout makes /bin, /lib, /lib64 symlinks into /usr; older layouts have real
    directories, which we bind read-only instead.
    """
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def privilege_drop(setpriv: str, uid: int) -> list[str]:
    """argv prefix that switches to `uid` before exec; an exec wrapper rather than Popen(user=...)
    because Popen only uses the cheap vfork path when no uid/gid change is requested."""
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


@functools.cache
def detect(uid_base: int = DEFAULT_UID_BASE) -> Isolation:
    """Probe once per process: actually start an empty bubblewrap sandbox as the uid runs will use."""
    prlimit, setpriv, bwrap = shutil.which("prlimit"), shutil.which("setpriv"), shutil.which("bwrap")
    root = os.geteuid() == 0
    if prlimit is None or (root and setpriv is None):
        return Isolation(NONE, None, prlimit, setpriv, False, "util-linux prlimit/setpriv not found")
    if bwrap is None:
        return Isolation(RLIMITS, None, prlimit, setpriv, root, "bubblewrap (bwrap) not installed")
    probe = (privilege_drop(setpriv, uid_base) if root else []) + [
        bwrap, "--unshare-all", "--die-with-parent", *usr_mounts(), "--proc", "/proc", "--dev", "/dev",
        "--", "/usr/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, env={}, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Isolation(RLIMITS, None, prlimit, setpriv, root, f"bwrap probe failed: {exc}")
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip()[:200]
        return Isolation(RLIMITS, None, prlimit, setpriv, root, f"bwrap cannot create namespaces: {why}")
    return Isolation(NAMESPACES, bwrap, prlimit, setpriv, root, "bubblewrap user namespaces work")
