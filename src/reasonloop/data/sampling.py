"""The next batch of a training loop: endless reshuffled passes over a pool, checkpointable.

`ShuffledPasses(size, order)` hands out indices into a pool of `size` items, pass after pass; each
pass visits every index once, in the order `order(pass_index, size)` makes. How a pass's order is
made is the one thing loops differ in, and the figures of record depend on it, so it is an explicit
parameter with two makers:

- `SeededShuffle(seed_of)`: pass e is `range(size)` shuffled by a fresh `random.Random(seed_of(e))`,
  read front to back. A pure function of e, so a checkpoint needs only (pass, position).
  SFT uses `seed_of=lambda e: seed + e`, online RL `seed_of=lambda e: f"{seed}:{e}"` (an int and a
  string seed the same `random.Random` differently: these are two orders, not one).
- `StreamShuffle(rng)`: each pass is shuffled by the next draws of `rng` and read back to front (the
  order `list.pop()` gives). The rng may be shared with other users (the self-improvement loop
  shares one with its fine-tuning batches), so its state is its owner's to checkpoint; the sampler
  checkpoints the pass in progress.

A pass is made when its first index is needed, not before, so a stream-shuffled pass draws from the
shared rng at the same moment the inline loops it replaces did.

    sampler = ShuffledPasses(len(pool), SeededShuffle(lambda e: f"{seed}:{e}"))
    batch = [pool[i] for i in sampler.next(8)]
    state = sampler.state_dict()          # {"epoch": 0, "position": 8}; load_state_dict(state) resumes
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol


class PassOrder(Protocol):
    reproducible: bool
    """True when the order of pass e depends on e alone (then it is not checkpointed)."""

    def __call__(self, epoch: int, size: int) -> list[int]:
        """A permutation of range(size): the order of pass `epoch`."""
        ...


class SeededShuffle:
    """Pass e: `range(size)` shuffled by `random.Random(seed_of(e))`, read front to back."""

    reproducible = True

    def __init__(self, seed_of: Callable[[int], int | str]):
        self.seed_of = seed_of

    def __call__(self, epoch: int, size: int) -> list[int]:
        order = list(range(size))
        random.Random(self.seed_of(epoch)).shuffle(order)
        return order


class StreamShuffle:
    """Each pass: `range(size)` shuffled by the next draws of the shared `rng`, read back to front."""

    reproducible = False

    def __init__(self, rng: random.Random):
        self.rng = rng

    def __call__(self, epoch: int, size: int) -> list[int]:
        order = list(range(size))
        self.rng.shuffle(order)
        order.reverse()  # the inline loops popped from the end
        return order


class ShuffledPasses:
    """Indices into a pool of `size` items, one reshuffled pass after another (see the module docstring)."""

    def __init__(self, size: int, order: PassOrder):
        self.size = size
        self.order_of = order
        self.epoch = 0  # the pass in progress
        self.position = 0  # indices of it handed out so far
        self._order: list[int] | None = None  # its order, made when its first index is needed

    def next(self, n: int) -> list[int]:
        """The next `n` indices; a pass that runs out continues into a freshly shuffled one."""
        if n > 0 and self.size == 0:
            raise ValueError("cannot draw from an empty pool")
        out = []
        for _ in range(n):
            if self._order is None:
                self._order = self.order_of(self.epoch, self.size)
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self.order_of(self.epoch, self.size)
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly: the pass and the position in it (and, for a stream order, the pass itself)."""
        state: dict[str, Any] = {"epoch": self.epoch, "position": self.position}
        if not self.order_of.reproducible:
            state["order"] = self._order
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if self.order_of.reproducible:
            self._order = None  # remade from the pass index when next needed
        else:
            self._order = None if state["order"] is None else [int(i) for i in state["order"]]
