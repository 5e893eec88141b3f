"""Several tasks as one: `task=mix:arithmetic+code_arith` (each part any task spec, e.g. `mix:arithmetic:1-3+code_arith`).

Examples interleave the parts round-robin (n/k of each for k parts); each keeps its own verifier. The
k-th part (0-based) gets `meta["domain"]` = its name and its levels offset by 10*k (code_arith's levels
1-4 become 11-14 after arithmetic's 1-5), so held-out tables keep the parts apart and the curriculum
ranks levels within each domain. Rewards are the components the parts share by name, each row scored
by its own part (0 where its part lacks the component); a part's pass/fail verdict is always the
`accuracy` component (code tasks call theirs `correct`). The embedded model is the last part's.
"""

from __future__ import annotations

import functools
from typing import Any

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec, example_columns
from reasonloop.tasks import TaskError
from reasonloop.tasks import make_task as make_part
from reasonloop.tasks.base import Task

LEVEL_OFFSET = 10
VERDICTS = ("accuracy", "correct")


class MixtureTask:
    def __init__(self, parts: list[tuple[str, Task]]):
        if len(parts) < 2:
            raise TaskError("task=mix needs at least two parts: mix:TASK+TASK[+...]")
        self.parts = parts
        self.name = "mix:" + "+".join(name for name, _ in parts)
        self.embedded_model = getattr(parts[-1][1], "embedded_model", "tiny-arith")

    @functools.cached_property
    def _specs(self) -> list[list[RewardSpec]]:
        """Each part's reward components (built on first use: a code part's builds its sandbox)."""
        return [self._renamed(task.rewards()) for _, task in self.parts]

    @staticmethod
    def _renamed(specs: list[RewardSpec]) -> list[RewardSpec]:
        return [RewardSpec("accuracy", s.fn, s.weight) if s.name in VERDICTS else s for s in specs]

    def _part(self, example: Example) -> int:
        return int(example.meta["part"])

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        k = len(self.parts)
        chunks = []
        for p, (name, task) in enumerate(self.parts):
            exs = task.examples(split, n // k + (p < n % k), seed)
            chunks.append([Example(ex.prompt, ex.answer, {**ex.meta, "domain": name, "part": p,
                                                          "level": LEVEL_OFFSET * p + int(ex.meta.get("level", 0))})
                           for ex in exs])
        return [ex for row in zip(*chunks) for ex in row] + [ex for c in chunks for ex in c[min(map(len, chunks)):]]

    def _unwrap(self, example: Example) -> Example:
        meta = {k: v for k, v in example.meta.items() if k not in ("domain", "part")}
        meta["level"] = int(example.meta["level"]) - LEVEL_OFFSET * self._part(example)
        return Example(example.prompt, example.answer, meta)

    def is_correct(self, completion: str, example: Example) -> bool:
        return self.parts[self._part(example)][1].is_correct(completion, self._unwrap(example))

    def answer_key(self, completion: str) -> Any:
        return completion.strip() or None

    def rewards(self) -> list[RewardSpec]:
        weights: dict[str, float] = {}
        for specs in self._specs:
            for s in specs:
                if weights.setdefault(s.name, s.weight) != s.weight:
                    raise TaskError(f"{self.name}: the parts weigh reward {s.name!r} differently")
        return [RewardSpec(name, self._component(name), weight) for name, weight in weights.items()]

    def _component(self, name: str):
        def fn(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
            out: list[float | None] = [0.0] * len(completions)
            for p, specs in enumerate(self._specs):
                spec = next((s for s in specs if s.name == name), None)
                rows = [i for i, part in enumerate(columns["part"]) if part == p]
                if spec is None or not rows:
                    continue
                exs = [self._unwrap(Example(prompts[i], columns["answer"][i],
                                            {k: v[i] for k, v in columns.items() if k != "answer"})) for i in rows]
                values = spec.fn(prompts=[prompts[i] for i in rows], completions=[completions[i] for i in rows],
                                 **example_columns(exs))
                for i, v in zip(rows, values):
                    out[i] = v
            return out

        fn.__name__ = name
        return fn


def make_task(arg: str | None, data_dir: str | None) -> MixtureTask:
    if not arg:
        raise TaskError("task=mix needs its parts: mix:TASK+TASK (e.g. mix:arithmetic+code_arith)")
    return MixtureTask([(spec.partition(":")[0], make_part(spec, data_dir)) for spec in arg.split("+")])
