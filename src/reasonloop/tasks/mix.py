"""`task=mix:A+B`: the examples of several tasks interleaved, each verified by its own task.

A task that needs every skill of its parts at once (frameworks/rctl.py composes per-task skill adapters for
it). Examples alternate between the parts (`examples(split, n)` takes n // parts + remainder from each, in
turn); each carries its part's name as `meta["source"]`, and `is_correct` and the single `accuracy` reward
dispatch on it. The parts must share a tokenizer and an embedded model (arithmetic and code_arith do:
`embedded_model` is the first part's that names one, so `mix:arithmetic+code_arith` trains tiny-code).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from reasonloop.data.records import Example
from reasonloop.rewards.core import RewardSpec
from reasonloop.tasks import TaskError, make_task as make_part


class MixTask:
    def __init__(self, parts: dict[str, Any]):
        self.parts = parts
        self.name = "mix:" + "+".join(parts)
        models = [getattr(t, "embedded_model", None) for t in parts.values()]
        if any(models):
            self.embedded_model = next(m for m in models if m)

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        names = list(self.parts)
        shares = [n // len(names) + (i < n % len(names)) for i in range(len(names))]
        pools = [[replace(e, meta={**e.meta, "source": name}) for e in self.parts[name].examples(split, k, seed)]
                 for name, k in zip(names, shares)]
        out = []
        for i in range(max(map(len, pools), default=0)):
            out += [pool[i] for pool in pools if i < len(pool)]
        return out

    def is_correct(self, completion: str, example: Example) -> bool:
        return self.parts[example.meta["source"]].is_correct(completion, example)

    def answer_key(self, completion: str):
        return completion.strip() or None

    def accuracy(self, prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **columns: Any) -> list[float]:
        rows = [Example(p, a, {k: v[i] for k, v in columns.items() if v[i] is not None})
                for i, (p, a) in enumerate(zip(prompts, answer))]
        return [float(self.is_correct(c, ex)) for c, ex in zip(completions, rows)]

    def rewards(self) -> list[RewardSpec]:
        return [RewardSpec("accuracy", self.accuracy, 1.0)]


def make_task(arg: str | None, data_dir: str | None) -> MixTask:
    names = [a for a in (arg or "").split("+") if a]
    if len(names) < 2:
        raise TaskError(f"task=mix:{arg or ''}: name two or more tasks joined by '+', e.g. mix:arithmetic+code_arith")
    return MixTask({name: make_part(name, data_dir) for name in names})
