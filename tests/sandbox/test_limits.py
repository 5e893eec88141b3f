"""The sandbox's wall-clock limit stretches with the machine's overload; its CPU-time limit does not."""

from __future__ import annotations

import pytest

from reasonloop.sandbox import Limits, Sandbox
from reasonloop.sandbox import records


@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine whose 1-minute load average the test sets."""
    state = {"load": 0.0}
    monkeypatch.setattr(records.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    monkeypatch.setattr(records.os, "sched_getaffinity", lambda pid: {0, 1})
    return state


@pytest.mark.parametrize("load, want", [(0.3, 2.0), (2.0, 2.0), (7.0, 7.0), (19.0, 19.0), (60.0, 20.0)])
def test_wall_limit_by_hand(machine, load, want):
    machine["load"] = load  # overload = load / 2 cores, clamped to [1, MAX_WALL_STRETCH = 10]
    assert Limits(wall_time_s=2.0).wall_limit() == pytest.approx(want)
    assert Limits(wall_time_s=2.0, load_scaled_wall=False).wall_limit() == 2.0


def test_a_starved_program_is_not_a_timeout_but_a_runaway_still_is(machine):
    limits = Limits(wall_time_s=0.5, cpu_time_s=1)
    sandbox = Sandbox(limits, allow_unisolated=True)
    slow = "import time; time.sleep(1.0); print('done')"  # 1 s of wall clock, no CPU: what starvation looks like
    machine["load"] = 0.0
    assert sandbox.run(slow).status == "timeout"
    machine["load"] = 8.0  # 4x overloaded: 2 s of wall clock
    result = sandbox.run(slow)
    assert (result.status, result.stdout) == ("ok", "done\n")
    spin = sandbox.run("while True: pass")  # CPU-bound: stopped by the CPU limit, or by the stretched wall clock
    assert spin.status == "timeout" and spin.wall_time < limits.wall_limit() + 1.0
