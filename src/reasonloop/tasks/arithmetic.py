"""The embedded task: procedural +/- chains with worked solutions and an exact verifier.

A problem is a left-to-right chain such as `17+4-9`, asked as `Q: 17+4-9=?` and answered as

    <think>17+4=21;21-9=12</think><answer>12</answer>

Levels set the number of operations and the operand range (see `LEVELS`). Running values never go
negative. Problems are assigned to a split by a hash of their text, so "train" and "test" can never
share a problem whatever the seed; each split is deduplicated.

The pretraining corpus (`pretraining_records`) mixes *careful* traces (one step per operation, as above)
with *lazy* ones that write the whole chain and jump to a result (`17+4-9=12`), the way web text
mixes worked solutions with bare answers. The base model imitates both, so it reasons carefully
only some of the time; reward for correct answers teaches it that care pays. Single-operation
problems read the same either way, which is why level 1 is easy for the base model.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from reasonloop.tasks import TaskError
from reasonloop.data.records import Example
from reasonloop.rewards.answer_format import parse_strict, single_answer, strict_format_reward
from reasonloop.rewards.core import RewardSpec

# level -> (number of operations, largest operand)
LEVELS: dict[int, tuple[int, int]] = {1: (1, 9), 2: (2, 9), 3: (3, 9), 4: (4, 9), 5: (2, 49)}
TEST_FRACTION_BUCKETS = 5  # one problem in five belongs to the held-out split

NUMBER_RE = re.compile(r"^[+-]?\d+(?:\.0+)?$")


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]
    ops: tuple[str, ...]  # "+" or "-", len(ops) == len(operands) - 1
    level: int

    @property
    def text(self) -> str:
        out = str(self.operands[0])
        for op, x in zip(self.ops, self.operands[1:]):
            out += f"{op}{x}"
        return out

    def running_values(self) -> list[int]:
        values = [self.operands[0]]
        for op, x in zip(self.ops, self.operands[1:]):
            values.append(values[-1] + x if op == "+" else values[-1] - x)
        return values

    @property
    def answer(self) -> int:
        return self.running_values()[-1]

    def trace(self, careful: bool = True) -> str:
        """The text inside `<think>`: one step per operation, or the whole chain at once."""
        values = self.running_values()
        if not careful:
            return f"{self.text}={values[-1]}"
        steps = [
            f"{values[i]}{op}{x}={values[i + 1]}" for i, (op, x) in enumerate(zip(self.ops, self.operands[1:]))
        ]
        return ";".join(steps)

    def corrupted_completion(self, step: int, delta: int) -> str:
        """A careful completion whose operation `step` (0-based) is off by `delta`, and every later step and
        the answer computed consistently from the wrong value: step `step` is the FIRST wrong step (the
        traces a process reward model's first-error accuracy is measured on)."""
        if not 0 <= step < len(self.ops):
            raise ValueError(f"step {step} out of range for {len(self.ops)} operations")
        if delta == 0:
            raise ValueError("delta must be non-zero: a zero delta leaves the trace correct")
        values = self.running_values()
        wrong = values[: step + 1] + [v + delta for v in values[step + 1 :]]  # the error carried forward
        steps = [f"{wrong[i]}{op}{x}={wrong[i + 1]}" for i, (op, x) in enumerate(zip(self.ops, self.operands[1:]))]
        return f"<think>{';'.join(steps)}</think><answer>{wrong[-1]}</answer>"


@dataclass(frozen=True)
class ErrorTrace:
    """A careful trace with a known first wrong step: `first_error` indexes the steps of
    `rewards.process.step_spans(completion)` (operation k is step k), None for a correct trace."""

    prompt: str
    completion: str
    first_error: int | None


def first_error_traces(problems: list[Problem], seed: int = 0, max_delta: int = 3) -> list[ErrorTrace]:
    """Two traces per problem: the correct careful one, and one corrupted at a uniformly drawn operation by
    a non-zero delta in [-max_delta, max_delta] that keeps every running value >= 0 (as the task's own
    problems do); later steps follow the wrong value, so the first wrong step is exactly known."""
    rng = random.Random(f"{seed}:first-error")
    out: list[ErrorTrace] = []
    for p in problems:
        step = rng.randrange(len(p.ops))
        later = p.running_values()[step + 1 :]
        deltas = [d for d in range(-max_delta, max_delta + 1) if d != 0 and min(later) + d >= 0]
        out.append(ErrorTrace(format_prompt(p), format_completion(p), None))
        out.append(ErrorTrace(format_prompt(p), p.corrupted_completion(step, rng.choice(deltas)), step))
    return out


def split_of(problem_text: str) -> str:
    bucket = int(hashlib.sha1(problem_text.encode()).hexdigest(), 16) % TEST_FRACTION_BUCKETS
    return "test" if bucket == 0 else "train"


def sample_problem(rng: random.Random, level: int) -> Problem:
    n_ops, hi = LEVELS[level]
    value = rng.randint(0, hi)
    operands, ops = [value], []
    for _ in range(n_ops):
        op = rng.choice("+-")
        if op == "-" and value == 0:
            op = "+"
        x = rng.randint(0, hi) if op == "+" else rng.randint(0, min(hi, value))
        value = value + x if op == "+" else value - x
        operands.append(x)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops), level)


def format_prompt(problem: Problem) -> str:
    return f"Q: {problem.text}=?\n"


def format_completion(problem: Problem, careful: bool = True) -> str:
    return f"<think>{problem.trace(careful)}</think><answer>{problem.answer}</answer>"


def parse_number(text: str) -> int | None:
    """Normalise `text` to an integer: spaces, commas, a leading '+', and a '.0' tail are allowed."""
    cleaned = text.strip().replace(",", "").replace(" ", "")
    if not NUMBER_RE.match(cleaned):
        return None
    return int(float(cleaned))


class ArithmeticTask:
    """Procedural arithmetic with difficulty levels; see the module docstring."""

    name = "arithmetic"

    def __init__(self, levels: tuple[int, ...] = tuple(LEVELS), max_completion_chars: int = 160):
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown:
            raise TaskError(f"unknown arithmetic levels {unknown}; known: {sorted(LEVELS)}")
        self.levels = tuple(levels)
        self.max_completion_chars = max_completion_chars

    # -- data -------------------------------------------------------------------------------------
    def problems(self, split: str, n: int, seed: int = 0, distinct: bool = True) -> list[Problem]:
        """`n` problems of `split`, round-robin over the levels; deterministic in (split, n, seed).

        With `distinct`, a level that runs out of new problems (level 1 has a few hundred) stops
        contributing, so fewer than `n` may come back.
        """
        if split not in ("train", "test"):
            raise TaskError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"{seed}:{split}")
        seen: set[str] = set()
        live = list(self.levels)
        out: list[Problem] = []
        i = 0
        while len(out) < n and live:
            level = live[i % len(live)]
            for _ in range(2_000):
                p = sample_problem(rng, level)
                if (not distinct or p.text not in seen) and split_of(p.text) == split:
                    seen.add(p.text)
                    out.append(p)
                    i += 1
                    break
            else:
                live.remove(level)
        return out

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        return [
            Example(format_prompt(p), str(p.answer), {"id": p.text, "level": p.level})
            for p in self.problems(split, n, seed)
        ]

    def first_error_traces(self, split: str, n: int, seed: int = 0) -> list[ErrorTrace]:
        """`first_error_traces` of `n` problems of `split`: a correct and a corrupted trace of each."""
        return first_error_traces(self.problems(split, n, seed), seed)

    def sft_records(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """(prompt, completion) records with careful traces: the supervised target."""
        return [{"prompt": format_prompt(p), "completion": format_completion(p)} for p in self.problems(split, n, seed)]

    def pretraining_records(self, n: int, seed: int = 0, p_careful: float = 0.4) -> list[dict]:
        """(prompt, completion) records of the base model's corpus: careful or lazy traces."""
        rng = random.Random(f"{seed}:careful")
        return [
            {"prompt": format_prompt(p), "completion": format_completion(p, careful=rng.random() < p_careful)}
            for p in self.problems("train", n, seed, distinct=False)
        ]

    # -- verifier and rewards -----------------------------------------------------------------------
    def is_correct(self, completion: str, example: Example) -> bool:
        parsed = parse_strict(completion)
        if parsed is None:
            return False
        got = parse_number(parsed.answer)
        return got is not None and got == parse_number(example.answer)

    def answer_key(self, completion: str) -> int | None:
        """The normalised answer for majority voting."""
        found = single_answer(completion)
        return parse_number(found) if found is not None else None

    def accuracy_reward(self, prompts, completions, answer, **_) -> list[float]:
        return [float(self.is_correct(c, Example(p, a))) for p, c, a in zip(prompts, completions, answer)]

    def length_penalty(self, prompts, completions, **_) -> list[float]:
        """0 up to `max_completion_chars`, then -1 per extra `max_completion_chars`, floored at -1."""
        limit = self.max_completion_chars
        return [-min(1.0, max(0, len(c) - limit) / limit) for c in completions]

    def rewards(self) -> list[RewardSpec]:
        return [
            RewardSpec("accuracy", self.accuracy_reward, 1.0),
            RewardSpec("format", strict_format_reward, 0.1),
            RewardSpec("length", self.length_penalty, 1.0),
        ]


def parse_levels(arg: str) -> tuple[int, ...]:
    """'2' -> (2,), '1-3' -> (1, 2, 3), '1,4' -> (1, 4)."""
    levels: list[int] = []
    for part in arg.split(","):
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise TaskError(f"bad level spec {arg!r}: use N, N-M or N,M (e.g. arithmetic:2-3)") from None
        if last < first:
            raise TaskError(f"bad level spec {arg!r}: the range {part!r} is empty (write the lower level first)")
        levels.extend(range(first, last + 1))
    return tuple(levels)


def make_task(arg: str | None, data_dir: str | None) -> ArithmeticTask:
    return ArithmeticTask(parse_levels(arg) if arg else tuple(LEVELS))
