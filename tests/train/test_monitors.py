"""train/monitors.py: each alert fires on the pattern it names and not on a healthy run."""

from __future__ import annotations

import math

from reasonloop.train.monitors import MonitorConfig, Monitors


def healthy(step: int) -> dict[str, float]:
    return {"reward/mean": 0.5 + 0.01 * (step % 3), "kl": 0.01, "entropy": 0.5, "length/mean": 20.0,
            "grad_norm": 1.0 + 0.1 * (step % 2), "accuracy": 0.5 + 0.01 * (step % 3)}


def test_a_healthy_run_raises_nothing():
    mon = Monitors(MonitorConfig(window=5))
    assert all(mon.check(healthy(i)) == [] for i in range(40))


def test_each_alert_fires_on_its_pattern():
    mon = Monitors(MonitorConfig(window=5))
    for i in range(10):
        mon.check(healthy(i))
    assert mon.check({**healthy(10), "loss": math.nan}) == ["nan"]
    assert "reward_spike" in mon.check({**healthy(11), "reward/mean": 5.0})
    assert mon.check({**healthy(12), "kl": 2.0}) == ["kl_blowup"]
    assert mon.check({**healthy(13), "entropy": 0.001}) == ["entropy_collapse"]
    assert mon.check({**healthy(14), "length/mean": 2.0}) == ["length_collapse"]
    assert mon.check({**healthy(15), "length/mean": 200.0}) == ["length_explosion"]
    assert mon.check({**healthy(16), "grad_norm": 100.0}) == ["grad_explosion"]


def test_reward_hacking_is_the_reward_holding_up_while_accuracy_falls():
    cfg = MonitorConfig(window=4, accuracy_drop=0.15, reward_spike_sigmas=1e9)
    hacked, honest = Monitors(cfg), Monitors(cfg)
    for i in range(8):  # both learn: reward and accuracy rise together
        m = {"reward/mean": 1.0 + 0.1 * i, "accuracy": 0.4 + 0.05 * i}
        assert hacked.check(m) == [] and honest.check(m) == []
    fired = []
    for i in range(8):  # then the reward keeps climbing in one run while the verifier says worse
        fired += hacked.check({"reward/mean": 2.0 + 0.2 * i, "accuracy": 0.7 - 0.1 * i})
        # in the other, the reward falls with accuracy: a bad phase, not a gamed reward
        assert "reward_hacking" not in honest.check({"reward/mean": 1.7 - 0.1 * i, "accuracy": 0.7 - 0.1 * i})
    assert "reward_hacking" in fired
    restored = Monitors(cfg)
    restored.load_state_dict(hacked.state_dict())
    assert restored.best_accuracy == hacked.best_accuracy
    assert "reward_hacking" in restored.check({"reward/mean": 4.0, "accuracy": 0.0})
    old = hacked.state_dict()
    del old["best_accuracy"]  # a checkpoint written before this monitor existed
    Monitors(cfg).load_state_dict(old)
