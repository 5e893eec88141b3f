"""The task interface: a task owns its data, its verifier and its rewards, so eval and reward cannot drift."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec


@runtime_checkable
class Task(Protocol):
    """A source of examples with an exact verifier.

    - `examples(split, n, seed)` is deterministic in (split, n, seed); "train" and "test" never share
      a problem.
    - `is_correct(completion, example)` is the verifier used by evaluation.
    - `rewards()` returns the default reward components used by training; the accuracy component calls
      `is_correct`, so training reward and evaluation agree.
    """

    name: str

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]: ...

    def is_correct(self, completion: str, example: Example) -> bool: ...

    def rewards(self) -> list[RewardSpec]: ...
