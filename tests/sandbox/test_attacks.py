"""Hostile programs: each is contained, gets a clear status and zero reward, and the caller survives.

Every attack is submitted as a "solution" to `add(a, b)` with split-assert tests, so a zero pass rate
proves the attack earned nothing; the run's status proves which limit or wall stopped it.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from reasonloop.rewards.code import CodeVerifier, pass_rate_reward
from reasonloop.sandbox import NAMESPACES, Limits, Sandbox, isolation_level

pytestmark = pytest.mark.skipif(isolation_level() != NAMESPACES,
                                reason="needs bubblewrap namespaces (apt-get install -y bubblewrap)")

SECRET = "reasonloop-secret-7f3a9c"
TESTS = ["assert add(1, 2) == 3", "assert add(5, 7) == 12"]
LIMITS = Limits(wall_time_s=2.0, cpu_time_s=1, memory_mb=256, max_processes=8, max_open_files=32,
                max_output_bytes=1 << 14, scratch_mb=8)


@dataclass(frozen=True)
class Attack:
    name: str
    code: str
    statuses: tuple[str, ...]  # acceptable sandbox statuses for a direct run
    stdout_must_not_contain: str = SECRET


def _attacks(host_file: str) -> list[Attack]:
    fail = ("runtime_error",)
    return [
        # -- reading host files -------------------------------------------------------------------
        Attack("read_etc_passwd", "print(open('/etc/passwd').read())", fail, "root:x:0:0"),
        Attack("read_etc_shadow", "print(open('/etc/shadow').read())", fail, "root:"),
        Attack("read_secret_file", f"print(open({host_file!r}).read())", fail),
        Attack("read_project_source", "print(open('/work/main/pyproject.toml').read())", fail, "reasonloop"),
        Attack("list_root_home", "import os; print(os.listdir('/root'))", fail, ".pyenv"),
        Attack("read_host_proc_environ", "print(open('/proc/1/environ').read())", fail + ("ok",), "PATH=/usr/local"),
        Attack("walk_filesystem_for_secret",
               "import os\nfor d,_,fs in os.walk('/'):\n  for f in fs:\n    p=os.path.join(d,f)\n"
               "    if 'secret' in p: print(open(p).read())", ("ok", "runtime_error", "timeout")),
        Attack("symlink_escape", f"import os; os.symlink({host_file!r}, 'l'); print(open('l').read())", fail),
        Attack("proc_root_escape", f"print(open('/proc/1/root' + {host_file!r}).read())", fail),
        Attack("environment_leak", "import os; print(dict(os.environ))", ("ok",), "VIRTUAL_ENV"),
        # -- writing outside scratch --------------------------------------------------------------
        Attack("overwrite_secret_file", f"open({host_file!r}, 'w').write('pwned')", fail),
        Attack("write_usr", "open('/usr/pwned', 'w').write('x')", fail),
        Attack("write_root_dir", "open('/pwned', 'w').write('x')", fail),
        Attack("write_dev", "open('/dev/pwned', 'w').write('x')", fail),
        Attack("modify_reward_harness",
               "import reasonloop.rewards.code as m; open(m.__file__, 'a').write('pwned')", fail),
        Attack("fill_scratch_disk", "f = open('big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))",
               ("runtime_error", "output_limit")),
        Attack("fill_tmpfs_many_files",
               "i = 0\nwhile True:\n  open(f'/tmp/f{i}', 'wb').write(b'x' * 10000); i += 1", fail),
        # -- network ------------------------------------------------------------------------------
        Attack("tcp_connect", "import socket; socket.create_connection(('1.1.1.1', 80), timeout=1)", fail),
        Attack("dns_lookup", "import socket; socket.gethostbyname('pypi.org')", fail),
        Attack("bind_listen", "import socket; s = socket.socket(); s.bind(('0.0.0.0', 8080)); s.listen(); "
                              "s.accept()", fail + ("timeout",)),
        Attack("unix_socket_to_host", "import socket; s = socket.socket(socket.AF_UNIX); "
                                      "s.connect('/run/systemd/private')", fail),
        # -- processes ----------------------------------------------------------------------------
        Attack("fork_bomb", "import os\nwhile True: os.fork()", ("runtime_error", "timeout", "killed")),
        Attack("subprocess_bomb", "import subprocess\nps = []\nwhile True: ps.append(subprocess.Popen"
                                  "(['sleep', '100']))", fail),
        Attack("thread_bomb", "import threading, time\nwhile True: threading.Thread(target=time.sleep, "
                              "args=(100,)).start()", ("timeout",)),
        Attack("busy_threads", "import threading\ndef spin():\n  while True: pass\n"
                               "for _ in range(4): threading.Thread(target=spin).start()", ("timeout",)),
        Attack("infinite_loop", "while True: pass", ("timeout",)),
        Attack("sleep_forever", "import time; time.sleep(1000)", ("timeout",)),
        Attack("zombies", "import os\nfor _ in range(5):\n  if os.fork() == 0: os._exit(0)\n"
                          "import time; time.sleep(100)", ("timeout",)),
        Attack("daemon_survivor", "import os, time\nif os.fork() == 0:\n  os.setsid()\n"
                                  "  if os.fork() == 0: time.sleep(1000)\n  os._exit(0)", ("ok",)),
        Attack("spawn_shell", "import os; os.system('cat /etc/passwd; id; ls /root')", ("ok",), "root:x:0:0"),
        Attack("exec_shell", "import os; os.execv('/bin/sh', ['sh', '-c', 'cat /etc/hostname /etc/passwd'])",
               fail, "root:x:0:0"),
        Attack("nested_user_namespace", "import os; os.unshare(os.CLONE_NEWUSER)", fail),
        # -- signals and the parent ---------------------------------------------------------------
        Attack("kill_parent", "import os, signal; os.kill(os.getppid(), signal.SIGKILL)", ("ok", "runtime_error")),
        Attack("kill_everything", "import os, signal; os.kill(-1, signal.SIGKILL)", ("ok", "runtime_error", "killed")),
        Attack("kill_host_pid", f"import os, signal; os.kill({os.getpid()}, signal.SIGKILL)", fail),
        Attack("ignore_signals_and_spin", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, "
                                          "signal.SIGXCPU, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\n"
                                          "while True: pass", ("timeout",)),
        Attack("raise_limits", "import resource; resource.setrlimit(resource.RLIMIT_NPROC, (10**6, 10**6))", fail),
        Attack("ptrace_parent", "import ctypes; libc = ctypes.CDLL(None); "
                                "assert libc.ptrace(16, 1, 0, 0) == 0, 'ptrace failed'", fail),
        # -- memory -------------------------------------------------------------------------------
        Attack("memory_bomb", "x = bytearray(10**10)", ("memory",)),
        Attack("memory_growth", "x = []\nwhile True: x.append(b'x' * (1 << 20))", ("memory",)),
        Attack("fork_memory_bomb", "import os\nfor _ in range(3): os.fork()\nx = bytearray(10**9)", ("memory",)),
        Attack("ctypes_segfault", "import ctypes; ctypes.string_at(0)", ("killed",)),
        Attack("ctypes_mmap_huge", "import mmap; m = mmap.mmap(-1, 10**10)", ("memory", "runtime_error")),
        Attack("deep_recursion", "import sys; sys.setrecursionlimit(10**8)\ndef f(n): return f(n + 1)\nf(0)",
               ("killed", "memory", "runtime_error", "timeout")),
        # -- output -------------------------------------------------------------------------------
        Attack("huge_stdout", "while True: print('x' * 10000)", ("output_limit",)),
        Attack("huge_stderr", "import sys\nwhile True: sys.stderr.write('x' * 10000)", ("output_limit",)),
        Attack("binary_garbage", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 10)", ("ok",)),
        # -- harness tampering --------------------------------------------------------------------
        Attack("exit_zero_early", "import sys; sys.exit(0)", ("ok",)),
        Attack("exit_in_teardown", "import atexit, os\natexit.register(lambda: os._exit(0))\n"
                                   "def add(a, b): raise RuntimeError", ("ok",)),
        Attack("exception_in_teardown", "import atexit\ndef boom(): raise SystemExit(0)\n"
                                        "atexit.register(boom)\ndef add(a, b): return 0", ("ok",)),
        Attack("forge_pass_markers", "import re, sys\nsrc = open(__file__).read()\n"
                                     "nonce = re.search(r'[0-9a-f]{32}', src).group(0)\n"
                                     "for i in range(2): print(f'\\n{nonce}|{i}|pass|')\nsys.exit(0)",
               ("runtime_error",)),  # no harness in a direct run: the nonce is absent
        Attack("patch_builtins", "import builtins\nbuiltins.repr = lambda x: \"'pass'\"\n"
                                 "builtins.eval = lambda *a: 12\ndef add(a, b): return None", ("ok",)),
        Attack("syntax_error", "def add(a, b) return a + b", ("syntax_error",)),
    ]


@pytest.fixture(scope="module")
def host_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("host") / "secret.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(LIMITS)


@pytest.fixture(scope="module")
def verifier(sandbox) -> CodeVerifier:
    return CodeVerifier(sandbox, workers=2)


ATTACKS = _attacks("/tmp/placeholder")


@pytest.mark.parametrize("attack_name", [a.name for a in ATTACKS])
def test_attack_is_contained(attack_name, sandbox, verifier, host_file):
    attack = next(a for a in _attacks(str(host_file)) if a.name == attack_name)
    project_file = Path(__file__).resolve().parents[2] / "src/reasonloop/rewards/code.py"
    project_before = project_file.read_bytes()
    start = time.monotonic()

    result = sandbox.run(attack.code)

    assert result.status in attack.statuses, (result.status, result.stderr[-500:])
    assert time.monotonic() - start < LIMITS.wall_limit() + 2  # the wall clock stretches on a loaded machine
    assert attack.stdout_must_not_contain not in result.stdout
    assert SECRET not in result.stderr
    assert host_file.read_text() == SECRET  # host file unchanged
    assert project_file.read_bytes() == project_before
    assert len(result.stdout.encode()) <= LIMITS.max_output_bytes
    reward = pass_rate_reward(verifier)([""], [attack.code], tests=[TESTS])
    assert reward == [0.0]
    os.kill(os.getpid(), 0)  # the caller is alive


def test_nothing_survives_a_run(sandbox):
    """A daemonised grandchild that left the session is gone when the run returns (zombies awaiting
    the host init's reaping hold no memory and run nothing, so they do not count). The grandchild
    execs `sleep` with a duration unique to this test, so sandboxes run by anyone else on the machine
    cannot be mistaken for it."""
    marker = f"{60 + random.random():.9f}"
    result = sandbox.run("import os\nif os.fork() == 0:\n  os.setsid()\n"
                         f"  os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\nprint(os.getpid())")
    assert result.status == "ok"
    time.sleep(0.2)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _live_process_with(p, marker)]
    assert leftovers == []


def _live_process_with(pid: str, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line for line in status.splitlines() if line.startswith("State:")), "")
    return marker in cmdline and "Z" not in state.split()[1:2]


def test_fork_bomb_does_not_starve_a_concurrent_run(sandbox):
    """RLIMIT_NPROC is counted per user namespace: a bomb next door leaves our run its processes."""
    from reasonloop.sandbox.pool import Job, SandboxPool

    with SandboxPool(sandbox, workers=2) as pool:
        bomb, good = pool.run_many([Job("import os\nwhile True: os.fork()"),
                                    Job("import subprocess; print(subprocess.run(['echo', 'hi'], "
                                        "capture_output=True).stdout.decode())")])
    assert bomb.status != "ok"
    assert good.status == "ok" and good.stdout.strip() == "hi"
