"""Anomaly monitors for long runs: each check looks at one step's metrics against recent history.

A monitor never stops a run by itself; it returns named alerts that the recipe logs, counts, and
(for the critical ones, when rollback is on) answers by restoring the last good checkpoint.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from reasonloop.config import require

CRITICAL = frozenset({"nan", "kl_blowup", "grad_explosion"})


@dataclass
class MonitorConfig:
    window: int = 20
    """Steps of history the spike/explosion checks compare against."""
    reward_spike_sigmas: float = 6.0
    """Flag a reward mean more than this many standard deviations above the recent mean."""
    kl_max: float = 1.0
    """Flag a mean per-token KL to the reference above this."""
    entropy_min: float = 0.02
    """Flag a mean per-token policy entropy below this (entropy collapse)."""
    length_collapse_ratio: float = 0.3
    """Flag a mean completion length below this fraction of the first step's."""
    length_explosion_ratio: float = 3.0
    """Flag a mean completion length above this multiple of the first step's."""
    grad_explosion_ratio: float = 10.0
    """Flag a gradient norm above this multiple of the recent median."""
    accuracy_drop: float = 0.15
    """Flag reward hacking: the verifier's accuracy on the training samples, averaged over the window, has
    fallen this far below its best window while the reward being optimised is no lower than it was then."""

    def __post_init__(self):
        require(self.window >= 2, "monitor.window must be >= 2")


@dataclass
class Monitors:
    cfg: MonitorConfig
    history: dict[str, deque] = field(default_factory=dict)
    first_length: float | None = None
    best_accuracy: tuple[float, float] | None = None  # (best window-mean accuracy, window-mean reward then)

    def _recent(self, key: str) -> deque:
        return self.history.setdefault(key, deque(maxlen=self.cfg.window))

    def check(self, m: dict[str, float]) -> list[str]:
        c = self.cfg
        alerts = []
        if any(isinstance(v, float) and not math.isfinite(v) for v in m.values()):
            alerts.append("nan")
        reward = m.get("reward/mean")
        past = self._recent("reward")
        if reward is not None and len(past) >= 5:
            mu, sd = statistics.fmean(past), statistics.pstdev(past)
            if reward > mu + c.reward_spike_sigmas * max(sd, 1e-3):
                alerts.append("reward_spike")
        if m.get("kl", 0.0) > c.kl_max:
            alerts.append("kl_blowup")
        if "entropy" in m and m["entropy"] < c.entropy_min:
            alerts.append("entropy_collapse")
        length = m.get("length/mean")
        if length is not None:
            self.first_length = self.first_length or max(length, 1.0)
            if length < c.length_collapse_ratio * self.first_length:
                alerts.append("length_collapse")
            if length > c.length_explosion_ratio * self.first_length:
                alerts.append("length_explosion")
        grad = m.get("grad_norm")
        grads = self._recent("grad_norm")
        if grad is not None and len(grads) >= 5 and grad > c.grad_explosion_ratio * statistics.median(grads):
            alerts.append("grad_explosion")
        for key, value in (("reward", reward), ("grad_norm", grad), ("accuracy", m.get("accuracy"))):
            if value is not None and math.isfinite(value):
                self._recent(key).append(value)
        if self._hacked():
            alerts.append("reward_hacking")
        return alerts

    def _hacked(self) -> bool:
        """Accuracy (the verifier) down by `accuracy_drop` from its best window, reward not down: the
        optimised reward has stopped tracking correctness (e.g. a learned reward model being gamed)."""
        accs, rewards = self.history.get("accuracy"), self.history.get("reward")
        if not accs or not rewards or len(accs) < self.cfg.window or len(rewards) < self.cfg.window:
            return False
        accuracy, reward = statistics.fmean(accs), statistics.fmean(rewards)
        if self.best_accuracy is None or accuracy > self.best_accuracy[0]:
            self.best_accuracy = (accuracy, reward)
        best, reward_then = self.best_accuracy
        return accuracy < best - self.cfg.accuracy_drop and reward >= reward_then

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}, "first_length": self.first_length,
                "best_accuracy": self.best_accuracy}

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: deque(v, maxlen=self.cfg.window) for k, v in state["history"].items()}
        self.first_length = state["first_length"]
        best = state.get("best_accuracy")  # absent in checkpoints written before this monitor
        self.best_accuracy = tuple(best) if best is not None else None
