"""Held-out evaluation: pass@1 (greedy and sampled), unbiased pass@k and maj@k, per difficulty level."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any, Callable, Hashable

import torch

from reasonloop.algos.passk import majority_correct, pass_at_k
from reasonloop.data.records import Example
from reasonloop.tasks.base import Task
from reasonloop.rollout.engine import RolloutEngine, SamplingConfig


def answer_key(task: Task, completion: str) -> Hashable | None:
    """The normalised answer used for majority voting; tasks may define `answer_key`, else raw text."""
    fn: Callable[[str], Hashable | None] | None = getattr(task, "answer_key", None)
    return fn(completion) if fn is not None else (completion.strip() or None)


def evaluate(
    engine: RolloutEngine,
    task: Task,
    examples: list[Example],
    render: Callable[[str], str],
    sampling: SamplingConfig,
    k: int = 0,
    greedy: bool = True,
    batch_prompts: int = 64,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict]]:
    """Returns ({"overall": metrics, "level/<L>": metrics, ...}, sample rows).

    Greedy decoding gives `pass@1_greedy`; k samples at `sampling.temperature` give `pass@1`
    (mean correctness), `pass@k` (unbiased) and `maj@k`. k=0 skips sampling.
    """
    per_problem: list[dict[str, Any]] = [{"level": ex.meta.get("level", "all")} for ex in examples]
    rows: list[dict] = []
    generator = torch.Generator().manual_seed(seed)
    modes = ([("greedy", 1, replace(sampling, temperature=0.0))] if greedy else []) + (
        [("sampled", k, sampling)] if k > 0 else []
    )
    for mode, n, params in modes:
        for start in range(0, len(examples), batch_prompts):
            chunk = examples[start : start + batch_prompts]
            batch = engine.generate([render(ex.prompt) for ex in chunk], n, params, generator)
            for i, ex in enumerate(chunk):
                comps = batch.completions[i * n : (i + 1) * n]
                ok = [task.is_correct(c, ex) for c in comps]
                stats = per_problem[start + i]
                if mode == "greedy":
                    stats["greedy"] = ok[0]
                else:
                    stats["correct"] = sum(ok)
                    stats["maj"] = majority_correct([answer_key(task, c) for c in comps], ok)
                rows.extend(
                    {"id": ex.id, "level": stats["level"], "mode": mode, "prompt": ex.prompt, "answer": ex.answer,
                     "completion": c, "correct": o}
                    for c, o in zip(comps, ok)
                )
    return summarise(per_problem, k), rows


def summarise(per_problem: list[dict[str, Any]], k: int) -> dict[str, Any]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for stats in per_problem:
        groups[f"level/{stats['level']}"].append(stats)
    groups = dict(sorted(groups.items()))
    groups["overall"] = per_problem
    out = {}
    for name, probs in groups.items():
        m: dict[str, Any] = {"n": len(probs)}
        if probs and "greedy" in probs[0]:
            m["pass@1_greedy"] = sum(p["greedy"] for p in probs) / len(probs)
        if k > 0 and probs:
            m["pass@1"] = sum(p["correct"] / k for p in probs) / len(probs)
            m[f"pass@{k}"] = sum(pass_at_k(k, p["correct"], k) for p in probs) / len(probs)
            m[f"maj@{k}"] = sum(p["maj"] for p in probs) / len(probs)
        out[name] = m
    return out


def flat_metrics(summary: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """{"overall": {"pass@1": x}} -> {"eval/pass@1": x, "eval/level/2/pass@1": ...} for metric logs."""
    out = {}
    for group, m in summary.items():
        head = prefix if group == "overall" else f"{prefix}{group}/"
        out.update({head + key: v for key, v in m.items() if key != "n"})
    return out


def format_table(summary: dict[str, Any]) -> str:
    keys = [k for k in next(iter(summary.values())) if k != "n"]
    lines = [f"{'group':<10} {'n':>4} " + " ".join(f"{k:>14}" for k in keys)]
    for group, m in summary.items():
        lines.append(f"{group:<10} {m['n']:>4} " + " ".join(f"{m.get(k, float('nan')):>14.3f}" for k in keys))
    return "\n".join(lines)
