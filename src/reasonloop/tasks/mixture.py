"""`task=mix:A+B[+...]`: several tasks as one, each example scored by its own task's verifier and rewards.

The components are task specs joined by `+` (`mix:arithmetic+code_arith`, `mix:arithmetic:1-3+code_arith`).
`examples(split, n)` interleaves the components round-robin (about n / k each). Every example carries
its component in `meta["task"]`; its level is renumbered `10 * index + level` (arithmetic 1-5, code_arith
11-14 in `mix:arithmetic+code_arith`), so levels stay numbers and per-level tables keep the tasks apart.

Rewards: the union of the components' reward components by name, each computed on the rows of the tasks
that have it and None (0 in the sum) on the others. A component named `correct` (the code tasks' verdict)
is renamed `accuracy`, so the RL trainer logs one accuracy and its per-level pass rates cover every task.
This is what R1's fourth stage needs: "all scenarios" in one RL run, each scored by its own rules.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec, example_columns
from reasonloop.tasks import TaskError, make_task as make_component

LEVEL_STRIDE = 10
RENAMED = {"correct": "accuracy"}


class MixtureTask:
    """Several tasks as one (module docstring)."""

    name = "mix"

    def __init__(self, specs: Sequence[str], data_dir: str | None = None):
        if len(specs) < 2:
            raise TaskError(f"task=mix needs two or more tasks joined by '+', got {'+'.join(specs)!r}")
        self.specs = list(specs)
        self.tasks = [make_component(s, data_dir) for s in specs]
        self.levels = tuple(LEVEL_STRIDE * i + lv for i, t in enumerate(self.tasks) for lv in getattr(t, "levels", (0,)))
        self.embedded_model = getattr(self.tasks[0], "embedded_model", "tiny-arith")
        self._specs: list[RewardSpec] | None = None

    def _component(self, example: Example) -> int:
        return int(example.meta["task"])

    def _tag(self, i: int, ex: Example) -> Example:
        level = ex.meta.get("level", 0)
        return Example(ex.prompt, ex.answer, {**ex.meta, "task": i, "level": LEVEL_STRIDE * i + int(level)})

    def _untag(self, ex: Example) -> Example:
        i = self._component(ex)
        meta = {k: v for k, v in ex.meta.items() if k != "task"}
        meta["level"] = int(ex.meta["level"]) - LEVEL_STRIDE * i
        return Example(ex.prompt, ex.answer, meta)

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        k = len(self.tasks)
        parts = [[self._tag(i, ex) for ex in t.examples(split, -(-n // k), seed=seed)] for i, t in enumerate(self.tasks)]
        out: list[Example] = []
        for j in range(max(map(len, parts))):
            out.extend(p[j] for p in parts if j < len(p))
        return out[:n]

    def sft_records(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """The components' worked solutions, interleaved (components without any are skipped)."""
        have = [t for t in self.tasks if hasattr(t, "sft_records")]
        parts = [t.sft_records(split, -(-n // len(have)), seed=seed) for t in have]
        out = [p[j] for j in range(max(map(len, parts))) for p in parts if j < len(p)]
        return out[:n]

    def is_correct(self, completion: str, example: Example) -> bool:
        return self.tasks[self._component(example)].is_correct(completion, self._untag(example))

    def answer_key(self, completion: str) -> Hashable | None:
        """The first component's key when it reads one, else the stripped text (code answers)."""
        for t in self.tasks:
            fn = getattr(t, "answer_key", None)
            if fn is not None and (key := fn(completion)) is not None:
                return key
        return completion.strip() or None

    def rewards(self) -> list[RewardSpec]:
        if self._specs is None:
            by_name: dict[str, list[tuple[int, RewardSpec]]] = {}
            for i, t in enumerate(self.tasks):
                for spec in t.rewards():
                    by_name.setdefault(RENAMED.get(spec.name, spec.name), []).append((i, spec))
            self._specs = []
            for name, parts in by_name.items():
                weights = {spec.weight for _, spec in parts}
                shared = weights.pop() if len(weights) == 1 else None  # else each part's weight is folded in
                self._specs.append(RewardSpec(name, self._routed(parts, fold=shared is None), shared or 1.0))
        return self._specs

    def _routed(self, parts: list[tuple[int, RewardSpec]], fold: bool):
        """A reward function over mixed rows: each component's function on its own rows (times its weight
        when `fold`: the parts' weights differ)."""
        def fn(prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
            out: list[float | None] = [None] * len(completions)
            for i, spec in parts:
                rows = [r for r, t in enumerate(columns["task"]) if t == i]
                if not rows:
                    continue
                examples = [self._untag(Example(prompts[r], columns["answer"][r],
                                                {k: v[r] for k, v in columns.items() if k != "answer"})) for r in rows]
                values = spec.fn(prompts=[prompts[r] for r in rows], completions=[completions[r] for r in rows],
                                 **example_columns(examples))
                for r, v in zip(rows, values):
                    out[r] = None if v is None else (spec.weight if fold else 1.0) * float(v)
            return out
        return fn


def make_task(arg: str | None, data_dir: str | None) -> MixtureTask:
    if not arg:
        raise TaskError("task=mix needs its tasks: mix:arithmetic+code_arith")
    return MixtureTask(arg.split("+"), data_dir)
