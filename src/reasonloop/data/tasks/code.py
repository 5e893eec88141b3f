"""Code tasks: MBPP and HumanEval from local JSONL, and a procedural family the tiny model can learn.

All three verify by running the completion's code against tests in the sandbox
(`reasonloop.rewards.code`); the training reward (`correct`) and `is_correct` share one code path.

- `mbpp` (`task=mbpp`, `data_dir=` a JSONL file or a directory): rows with `task_id`, `text` (or
  `prompt`, sanitized MBPP), `test_list`, optional `test_setup_code`/`test_imports`, `code`. A
  directory may hold `train.jsonl`/`test.jsonl`; a single file is split by the paper's task-id ranges
  (test 11-510, validation 511-600, train 601-974; 1-10 are few-shot prompts).
- `humaneval` (`task=humaneval`): rows with `task_id`, `prompt`, `canonical_solution`, `test`,
  `entry_point`. An evaluation set: only the "test" split exists.
- `code_arith` (`task=code_arith` or `code_arith:LEVEL[,LEVEL]`): "write f(a,b)=a*b+3" answered as
  `<answer>def f(a,b):return a*b+3</answer>`, checked by split asserts on random inputs. Problems go
  to train/test by a hash of their expression, so the splits never share one.
"""

from __future__ import annotations

import functools
import hashlib
import random
from pathlib import Path
from typing import Any

from reasonloop.data.records import Example
from reasonloop.rewards.code import CodeVerifier, correct_reward
from reasonloop.rewards.core import RewardSpec, example_columns

MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975)}


class _SandboxedTask:
    """Shared verification: the sandbox is built on first use, so loading examples needs none."""

    name = "code"

    @functools.cached_property
    def verifier(self) -> CodeVerifier:
        return CodeVerifier()

    def is_correct(self, completion: str, example: Example) -> bool:
        return self.rewards()[0].fn(prompts=[example.prompt], completions=[completion],
                                    **example_columns([example]))[0] == 1.0

    def rewards(self) -> list[RewardSpec]:
        return [RewardSpec("correct", correct_reward(self.verifier), 1.0)]


def _pick(rows: list[Example], n: int, seed: int) -> list[Example]:
    """A deterministic sample of `n` rows (all of them, shuffled, when n <= 0 or n >= len)."""
    rows = sorted(rows, key=lambda e: e.id)
    random.Random(seed).shuffle(rows)
    return rows if n <= 0 else rows[:n]


def load_jsonl_rows(data_dir: str | None, split: str) -> tuple[list[dict[str, Any]], bool]:
    """Rows from `data_dir` with the `datasets` JSON loader; (rows, already_split).

    A directory with `{split}.jsonl` gives that split; otherwise the single JSONL file (or the only
    one in the directory) gives every row, to be split by the caller.
    """
    import datasets  # heavy; only code tasks need it

    if data_dir is None:
        raise ValueError("this task reads local JSONL: pass data_dir=<file.jsonl or directory>")
    path = Path(data_dir)
    if path.is_dir() and (path / f"{split}.jsonl").exists():
        path, already_split = path / f"{split}.jsonl", True
    elif path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if len(files) != 1:
            raise ValueError(f"{data_dir}: expected {split}.jsonl or exactly one *.jsonl, found {files}")
        path, already_split = files[0], False
    else:
        already_split = False
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    return [dict(r) for r in ds], already_split


class MBPPTask(_SandboxedTask):
    name = "mbpp"

    def __init__(self, data_dir: str | None):
        self.data_dir = data_dir

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in MBPP_SPLITS:
            raise ValueError(f"mbpp split must be one of {sorted(MBPP_SPLITS)}, got {split!r}")
        rows, already_split = load_jsonl_rows(self.data_dir, split)
        if not already_split:
            rows = [r for r in rows if int(r["task_id"]) in MBPP_SPLITS[split]]
        return _pick([self._example(r) for r in rows], n, seed)

    @staticmethod
    def _example(row: dict[str, Any]) -> Example:
        text = row.get("text") or row["prompt"]
        tests = list(row["test_list"])
        setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
        prompt = f"{text}\nYour code should pass these tests:\n" + "\n".join(tests) + "\n"
        return Example(prompt, row.get("code", ""), {
            "id": f"mbpp/{row['task_id']}", "tests": tests, "test_style": "assert", "test_setup": setup})


class HumanEvalTask(_SandboxedTask):
    name = "humaneval"

    def __init__(self, data_dir: str | None):
        self.data_dir = data_dir

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split != "test":
            raise ValueError(f"humaneval is an evaluation set with only a 'test' split, got {split!r}")
        rows, _ = load_jsonl_rows(self.data_dir, split)
        return _pick([self._example(r) for r in rows], n, seed)

    @staticmethod
    def _example(row: dict[str, Any]) -> Example:
        entry = row["entry_point"]
        return Example(row["prompt"], row.get("canonical_solution", ""), {
            "id": row["task_id"], "tests": [f"{row['test']}\ncheck({entry})\n"], "test_style": "assert",
            "code_prefix": row["prompt"], "entry_point": entry})


# -- procedural: code_arith ---------------------------------------------------------------------------

# level -> (number of variables, number of operations, largest constant)
CODE_ARITH_LEVELS: dict[int, tuple[int, int, int]] = {1: (2, 1, 0), 2: (2, 2, 9), 3: (3, 2, 9), 4: (3, 3, 9)}
VARIABLES = "abc"
TEST_INPUTS = 4
TEST_BUCKETS = 5  # one expression in five is held out


def sample_expression(rng: random.Random, level: int) -> str:
    """A random `+ - *` expression over the first k variables, each used at least once."""
    n_vars, n_ops, max_const = CODE_ARITH_LEVELS[level]
    names = list(VARIABLES[:n_vars])
    atoms = names + [str(rng.randint(1, max_const)) for _ in range(n_ops + 1 - n_vars)]
    rng.shuffle(atoms)
    ops = [rng.choice("+-*") for _ in range(n_ops)]
    return atoms[0] + "".join(op + atom for op, atom in zip(ops, atoms[1:]))


def code_arith_split(expression: str) -> str:
    bucket = int(hashlib.sha1(expression.encode()).hexdigest(), 16) % TEST_BUCKETS
    return "test" if bucket == 0 else "train"


class CodeArithTask(_SandboxedTask):
    """`Q: code f(a,b)=a*b+3` -> `<answer>def f(a,b):return a*b+3</answer>`; 4 split-assert tests."""

    name = "code_arith"

    def __init__(self, levels: tuple[int, ...] = tuple(CODE_ARITH_LEVELS)):
        unknown = [lv for lv in levels if lv not in CODE_ARITH_LEVELS]
        if unknown:
            raise ValueError(f"unknown code_arith levels {unknown}; known: {sorted(CODE_ARITH_LEVELS)}")
        self.levels = levels

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        # A level that runs out of new expressions stops contributing, so fewer than `n` may come
        # back (as `ArithmeticTask` does); callers ask for large pools.
        rng, seen, out = random.Random(f"code_arith:{seed}:{split}"), set(), []
        live, i = list(self.levels), 0
        while len(out) < n and live:
            level = live[i % len(live)]
            for _ in range(2_000):
                expr = sample_expression(rng, level)
                if expr not in seen and code_arith_split(expr) == split:
                    seen.add(expr)
                    out.append(self._example(expr, level, rng))
                    i += 1
                    break
            else:
                live.remove(level)
        return out

    def sft_records(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """(prompt, reference solution) records: what `reasonloop sft task=code_arith` trains on."""
        return [{"prompt": ex.prompt, "completion": ex.answer} for ex in self.examples(split, n, seed)]

    @staticmethod
    def _example(expr: str, level: int, rng: random.Random) -> Example:
        params = ",".join(VARIABLES[:CODE_ARITH_LEVELS[level][0]])
        tests = []
        for _ in range(TEST_INPUTS):
            env = {v: rng.randint(-9, 9) for v in params.split(",")}
            value = eval(expr, {"__builtins__": {}}, env)  # our own generated expression, not model output
            tests.append(f"assert f({','.join(str(env[v]) for v in params.split(','))}) == {value}")
        return Example(f"Q: code f({params})={expr}\n", f"<answer>def f({params}):return {expr}</answer>",
                       {"id": expr, "level": level, "tests": tests, "test_style": "assert"})


def make_code_arith(arg: str | None, data_dir: str | None) -> CodeArithTask:
    """Registry factory for `code_arith[:LEVELS]`, e.g. `code_arith:1,2`."""
    return CodeArithTask(tuple(int(x) for x in arg.split(",")) if arg else tuple(CODE_ARITH_LEVELS))


def make_mbpp(arg: str | None, data_dir: str | None) -> MBPPTask:
    return MBPPTask(data_dir)


def make_humaneval(arg: str | None, data_dir: str | None) -> HumanEvalTask:
    return HumanEvalTask(data_dir)
