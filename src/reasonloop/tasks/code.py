"""Code tasks: MBPP and HumanEval from local JSONL, and a procedural family the tiny model can learn.

All three verify by running the completion's code against tests in the sandbox
(`reasonloop.rewards.code`); the training reward (`correct`) and `is_correct` share one code path.

- `mbpp` (`task=mbpp`, `data_dir=` a JSONL file or a directory): rows with `task_id`, `text` (or
  `prompt`, sanitized MBPP), `test_list`, optional `test_setup_code`/`test_imports`, `code`. A
  directory may hold `train.jsonl`/`test.jsonl`; a single file is split by the paper's task-id ranges
  (test 11-510, validation 511-600, train 601-974; 1-10 are few-shot prompts).
- `humaneval` (`task=humaneval`): rows with `task_id`, `prompt`, `canonical_solution`, `test`,
  `entry_point`. An evaluation set: only the "test" split exists.
- `apps`, `codecontests` (`task=apps|codecontests`, `data_dir=`): standard-input/output problems
  from JSONL in the layouts of the APPS and DeepMind CodeContests releases (APPS `input_output` with
  `inputs`/`outputs`; CodeContests `public_tests`/`private_tests`/`generated_tests`); each case is one
  sandbox run, stdout compared line by line. APPS call-based (`fn_name`) rows are skipped and counted.
- `code_arith` (`task=code_arith` or `code_arith:LEVEL[,LEVEL]`): a formula in maths notation,
  `Q: code f(a,b)=ba+3+8+8`, answered as `<answer>def f(a,b):return b*a+3+8+8</answer>`: the model
  must turn implicit products into `*` and get the constants right; checked by split asserts on
  random inputs. Problems go to train/test by a hash of their expression, so the splits never share
  one. The embedded model for it is tiny-code (docs/tasks-embedded.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from reasonloop.data.io import read_jsonl
from reasonloop.data.records import Example
from reasonloop.tasks import TaskError
from reasonloop.tasks.hygiene import in_test_split
from reasonloop.rewards.code import CodeVerifier, correct_reward, unroll_check
from reasonloop.rewards.core import RewardSpec, example_columns

log = logging.getLogger(__name__)

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


def _task_number(row: dict[str, Any]) -> int:
    """MBPP's integer task id; a row without one is skipped when splitting by id ranges."""
    try:
        return int(row["task_id"])
    except (KeyError, TypeError, ValueError):
        return -1


def _pick(rows: list[Example], n: int, seed: int) -> list[Example]:
    """A deterministic sample of `n` rows (all of them, shuffled, when n <= 0 or n >= len)."""
    rows = sorted(rows, key=lambda e: e.id)
    random.Random(seed).shuffle(rows)
    return rows if n <= 0 else rows[:n]


def load_jsonl_rows(data_dir: str | None, split: str) -> tuple[list[dict[str, Any]], bool]:
    """Rows from `data_dir` through the one loader (`data.io.read_jsonl`); (rows, already_split).

    A directory with `{split}.jsonl` gives that split; otherwise the single JSONL file (or the only
    one in the directory) gives every row, to be split by the caller.
    """
    if not data_dir:
        raise TaskError("this task reads local JSONL: pass data_dir=<file.jsonl or directory>")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise TaskError(f"data_dir={data_dir!r} does not exist (give a .jsonl file or a directory of them)")
    if path.is_dir() and (path / f"{split}.jsonl").exists():
        path, already_split = path / f"{split}.jsonl", True
    elif path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        named = [f.name for f in files if f.stem in ("train", "test", "validation", "valid", "dev")]
        if named:  # a split layout without this split: never fall back to splitting another split's rows
            raise TaskError(f"{data_dir}: has {named} but no {split}.jsonl")
        if len(files) != 1:
            raise TaskError(f"{data_dir}: expected {split}.jsonl or exactly one *.jsonl, found {[f.name for f in files]}")
        path, already_split = files[0], False
    else:
        already_split = False
    return read_jsonl(path), already_split


def parse_rows(name: str, rows: list[dict[str, Any]], parse: Any) -> tuple[list[Example | None], Counter]:
    """`parse(row)` for every row; rows it cannot read (missing keys, wrong types) are skipped and counted."""
    out: list[Example | None] = []
    skipped: Counter = Counter()
    for row in rows:
        try:
            out.append(parse(row))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # json errors are ValueErrors
            skipped[f"{type(exc).__name__}: {exc}"[:80]] += 1
    return out, skipped


def _report(name: str, kept: list[Example], skipped: Counter, total: int) -> list[Example]:
    if skipped:
        log.warning("%s: skipped %d of %d rows: %s", name, sum(skipped.values()), total, dict(skipped))
    if total and not kept and skipped:
        raise TaskError(f"{name}: no usable rows ({sum(skipped.values())} of {total} skipped: {dict(skipped)})")
    return kept


class MBPPTask(_SandboxedTask):
    name = "mbpp"

    def __init__(self, data_dir: str | None):
        self.data_dir = data_dir

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in MBPP_SPLITS:
            raise TaskError(f"mbpp split must be one of {sorted(MBPP_SPLITS)}, got {split!r}")
        rows, already_split = load_jsonl_rows(self.data_dir, split)
        if not already_split:
            rows = [r for r in rows if _task_number(r) in MBPP_SPLITS[split]]
        parsed, skipped = parse_rows(self.name, rows, self._example)
        return _pick(_report(self.name, [e for e in parsed if e is not None], skipped, len(rows)), n, seed)

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
            raise TaskError(f"humaneval is an evaluation set with only a 'test' split, got {split!r}")
        rows, _ = load_jsonl_rows(self.data_dir, split)
        parsed, skipped = parse_rows(self.name, rows, self._example)
        return _pick(_report(self.name, [e for e in parsed if e is not None], skipped, len(rows)), n, seed)

    @staticmethod
    def _example(row: dict[str, Any]) -> Example:
        entry = row["entry_point"]
        unrolled = unroll_check(row["test"], entry)  # splittable asserts keep expected values out of the sandbox
        tests, setup = unrolled or ([f"{row['test']}\ncheck({entry})\n"], "")
        return Example(row["prompt"], row.get("canonical_solution", ""), {
            "id": row["task_id"], "tests": tests, "test_style": "assert", "test_setup": setup,
            "code_prefix": row["prompt"], "entry_point": entry})


# -- standard input/output: APPS, CodeContests -----------------------------------------------------

STDIO_INSTRUCTION = "\n\nWrite a Python 3 program that reads the input from standard input and prints the answer.\n"
STDIO_TEST_FRACTION = 0.2  # share of an unsplit file that is held out (by a hash of the problem text)


def _text(value: Any) -> str:
    """APPS stores an input/output as a string or a list of lines."""
    return "\n".join(map(str, value)) + "\n" if isinstance(value, list) else str(value)


def _json_field(row: dict[str, Any], key: str) -> Any:
    value = row[key]
    return json.loads(value) if isinstance(value, str) else value


def apps_example(row: dict[str, Any]) -> Example | None:
    """An APPS row (question, input_output, solutions); None for call-based (`fn_name`) problems."""
    io = _json_field(row, "input_output")
    if io.get("fn_name"):
        return None
    tests = [{"input": _text(i), "output": _text(o)} for i, o in zip(io["inputs"], io["outputs"], strict=True)]
    if not tests:
        raise ValueError("no test cases")
    solutions = _json_field(row, "solutions") if row.get("solutions") else []
    return _stdio_example(f"apps/{row['problem_id']}", row["question"], tests, solutions)


CODECONTESTS_PYTHON3 = 3  # the `language` code of Python 3 solutions in DeepMind's CodeContests


def codecontests_example(row: dict[str, Any]) -> Example:
    """A CodeContests row: description, public/private/generated tests ({input: [...], output: [...]})."""
    tests = [{"input": i, "output": o}
             for key in ("public_tests", "private_tests", "generated_tests") if row.get(key)
             for i, o in zip(row[key]["input"], row[key]["output"], strict=True)]
    if not tests:
        raise ValueError("no test cases")
    sols = row.get("solutions") or {"language": [], "solution": []}
    python = [code for lang, code in zip(sols["language"], sols["solution"]) if lang == CODECONTESTS_PYTHON3]
    return _stdio_example(f"codecontests/{row['name']}", row["description"], tests, python)


def _stdio_example(id_: str, statement: str, tests: list[dict[str, str]], solutions: list[str]) -> Example:
    """The problem statement plus the stdin/stdout instruction; the first solution (if any) as the answer."""
    answer = f"```python\n{solutions[0]}\n```" if solutions else ""
    return Example(statement + STDIO_INSTRUCTION, answer, {"id": id_, "tests": tests, "test_style": "io"})


class StdioTask(_SandboxedTask):
    """Problems judged by running the program on each test input and comparing its standard output.

    `data_dir`: a directory of `{split}.jsonl` files, or one JSONL file split by a hash of the problem
    text (20% test). Rows that cannot be parsed, have no tests, or (APPS) are call-based are skipped,
    counted and logged.
    """

    def __init__(self, name: str, data_dir: str | None, parse: Any):
        self.name, self.data_dir, self.parse = name, data_dir, parse

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        rows, already_split = load_jsonl_rows(self.data_dir, split)
        if not already_split and split not in ("train", "test"):
            raise TaskError(f"{self.name}: a single file splits into 'train' and 'test' only, got {split!r}")
        parsed, skipped = parse_rows(self.name, rows, self.parse)
        out = []
        for ex in parsed:
            if ex is None:
                skipped["call-based (fn_name), not a stdin/stdout problem"] += 1
            elif already_split or in_test_split(ex.prompt, STDIO_TEST_FRACTION) == (split == "test"):
                out.append(ex)
        return _pick(_report(self.name, out, skipped, len(rows)), n, seed)


# -- procedural: code_arith ---------------------------------------------------------------------------

# level -> (variables, operations between them, single-digit constants added or subtracted after them)
CODE_ARITH_LEVELS: dict[int, tuple[int, int, int]] = {1: (1, 0, 2), 2: (2, 1, 2), 3: (2, 1, 3), 4: (3, 2, 4)}
VARIABLES = "abc"
TEST_INPUTS = 4
TEST_BUCKETS = 5  # one expression in five is held out


def sample_terms(rng: random.Random, level: int) -> tuple[str, list[int]]:
    """A `+ - *` expression over the first k variables (each once) and the signed constants after it."""
    n_vars, n_ops, n_consts = CODE_ARITH_LEVELS[level]
    names = list(VARIABLES[:n_vars])
    rng.shuffle(names)
    ops = [rng.choice("+-*") for _ in range(n_ops)]
    variables = names[0] + "".join(op + name for op, name in zip(ops, names[1:]))
    return variables, [rng.choice((1, -1)) * rng.randint(1, 9) for _ in range(n_consts)]


def signed(constants: list[int]) -> str:
    """[4, -7, 3] -> '+4-7+3'."""
    return "".join(f"{c:+d}" for c in constants)


def maths_notation(expression: str) -> str:
    """`3*a*b-7` -> `3ab-7`: a product whose right factor is a variable is written by juxtaposition."""
    return re.sub(r"\*(?=[a-z])", "", expression)


def code_arith_split(expression: str) -> str:
    bucket = int(hashlib.sha1(expression.encode()).hexdigest(), 16) % TEST_BUCKETS
    return "test" if bucket == 0 else "train"


class CodeArithTask(_SandboxedTask):
    """`Q: code f(a,b)=ab+4-7+3` -> `<answer>def f(a,b):return a*b+4-7+3</answer>`; 4 split-assert tests.

    The reference program copies the formula and lets Python do the arithmetic; `pretraining_records`
    also writes *lazy* programs that fold the constants in the head (`return a*b+4-7+3` -> `return a*b`),
    which a tiny model gets wrong as the chain grows: the headroom RL has to find, as in the arithmetic task.
    """

    name = "code_arith"
    embedded_model = "tiny-code"  # what model.name=embedded means for this task (models/loading.py)

    def __init__(self, levels: tuple[int, ...] = tuple(CODE_ARITH_LEVELS)):
        unknown = [lv for lv in levels if lv not in CODE_ARITH_LEVELS]
        if unknown or not levels:
            raise TaskError(f"unknown code_arith levels {unknown}; known: {sorted(CODE_ARITH_LEVELS)}")
        self.levels = levels

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise TaskError(f"split must be 'train' or 'test', got {split!r}")
        # A level that runs out of new expressions stops contributing, so fewer than `n` may come
        # back (as `ArithmeticTask` does); callers ask for large pools.
        rng, seen, out = random.Random(f"code_arith:{seed}:{split}"), set(), []
        live, i = list(self.levels), 0
        while len(out) < n and live:
            level = live[i % len(live)]
            for _ in range(2_000):
                variables, constants = sample_terms(rng, level)
                expr = variables + signed(constants)
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

    def pretraining_records(self, n: int, seed: int = 0, p_careful: float = 0.4) -> list[dict]:
        """`n` train-split draws (levels uniform, repeats allowed), each answered by the reference
        program with probability `p_careful`, else by the lazy one that folds the constants."""
        rng, records = random.Random(f"code_arith:{seed}:corpus"), []
        while len(records) < n:
            level = rng.choice(self.levels)
            variables, constants = sample_terms(rng, level)
            expr = variables + signed(constants)
            if code_arith_split(expr) != "train":
                continue
            params = self._params(level)
            folded = sum(constants)
            body = expr if rng.random() < p_careful else variables + (f"{folded:+d}" if folded else "")
            records.append({"prompt": self._prompt(params, expr), "id": expr, "level": level,
                            "completion": self._program(params, body)})
        return records

    @staticmethod
    def _params(level: int) -> str:
        return ",".join(VARIABLES[:CODE_ARITH_LEVELS[level][0]])

    @staticmethod
    def _prompt(params: str, expr: str) -> str:
        return f"Q: code f({params})={maths_notation(expr)}\n"

    @staticmethod
    def _program(params: str, body: str) -> str:
        return f"<answer>def f({params}):return {body}</answer>"

    def _example(self, expr: str, level: int, rng: random.Random) -> Example:
        params = self._params(level)
        tests = []
        for _ in range(TEST_INPUTS):
            env = {v: rng.randint(-9, 9) for v in params.split(",")}
            value = eval(expr, {"__builtins__": {}}, env)  # our own generated expression, not model output
            tests.append(f"assert f({','.join(str(env[v]) for v in params.split(','))}) == {value}")
        return Example(self._prompt(params, expr), self._program(params, expr),
                       {"id": expr, "level": level, "tests": tests, "test_style": "assert"})


def make_code_arith(arg: str | None, data_dir: str | None) -> CodeArithTask:
    """Registry factory for `code_arith[:LEVELS]`, e.g. `code_arith:1,2`."""
    if not arg:
        return CodeArithTask()
    try:
        levels = tuple(int(x) for x in arg.split(","))
    except ValueError:
        raise TaskError(f"task=code_arith:{arg}: levels are comma-separated integers in "
                        f"{sorted(CODE_ARITH_LEVELS)}, e.g. code_arith:1,2") from None
    return CodeArithTask(levels)


def make_mbpp(arg: str | None, data_dir: str | None) -> MBPPTask:
    return MBPPTask(data_dir)


def make_humaneval(arg: str | None, data_dir: str | None) -> HumanEvalTask:
    return HumanEvalTask(data_dir)


def make_apps(arg: str | None, data_dir: str | None) -> StdioTask:
    return StdioTask("apps", data_dir, apps_example)


def make_codecontests(arg: str | None, data_dir: str | None) -> StdioTask:
    return StdioTask("codecontests", data_dir, codecontests_example)
