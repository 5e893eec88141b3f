"""Concurrent runs never share a uid, across `Sandbox` objects and processes (a flocked slot per run)."""

from __future__ import annotations

import threading
import time

import pytest

from reasonloop.sandbox import Limits, Sandbox
from reasonloop.sandbox.runner import _Slots


def test_slots_are_taken_machine_wide_and_reused(tmp_path):
    a, b = _Slots(1000, str(tmp_path)), _Slots(1000, str(tmp_path))  # two processes' allocators, one lock dir
    with a.take() as first, b.take() as second, a.take() as third:
        assert (first, second, third) == (0, 1, 2)
    with b.take() as again:
        assert again == 0, "the lowest free slot"


def test_a_run_that_ends_does_not_kill_another_sandboxs_run(monkeypatch):
    """At the rlimits level a run's teardown is `kill -9 -1` as its uid: with one uid for both runs (two
    Sandbox objects, as two processes have), the short run's teardown killed the long one."""
    long, short = (Sandbox(Limits(wall_time_s=20, cpu_time_s=5), allow_unisolated=True) for _ in range(2))
    if not long.iso.drops_privileges:
        pytest.skip("runs as the caller's uid here (not root, or no setpriv): no per-run uid to share")
    monkeypatch.setattr(Limits, "wall_limit", lambda self: self.wall_time_s)  # no load stretch needed
    box = {}
    worker = threading.Thread(target=lambda: box.update(r=long.run("import time; time.sleep(1.5); print('alive')")))
    worker.start()
    time.sleep(0.5)  # the long run is sleeping in its sandbox
    assert short.run("print(1)").stdout == "1\n"
    worker.join()
    assert (box["r"].status, box["r"].stdout) == ("ok", "alive\n")


def test_a_lock_directory_of_another_user_is_refused(tmp_path):
    import os

    from reasonloop.sandbox.runner import IsolationError

    if os.getuid() != 0:
        pytest.skip("only root can hand a directory to another user")
    os.chown(tmp_path, 12345, 12345)  # someone else's: they could hold or fake the locks
    with pytest.raises(IsolationError, match="belongs to another user"):
        with _Slots(1000, str(tmp_path)).take():
            pass
