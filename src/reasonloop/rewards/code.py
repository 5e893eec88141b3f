"""Code rewards: run extracted code against test cases in the sandbox.

Two test styles, stored in an example's `meta["tests"]` (a reward function receives it as `tests`):

- ``"io"`` (APPS, CodeContests): `[{"input": str, "output": str}, ...]`; one sandbox run per case,
  stdout compared line by line ignoring trailing whitespace. Expected output never enters the sandbox.
- ``"assert"`` (MBPP, HumanEval): `["assert f(1) == 2", ...]`, run after the program in one process.
  A test of the form `assert EXPR == LITERAL` is *split*: the sandbox prints `repr(EXPR)` and the
  parent compares it with LITERAL, so the expected value never enters the sandbox and a program that
  reads or rewrites the harness still cannot fake a pass without computing the answer. Any other
  test (`math.isclose`, a HumanEval `check(candidate)` that `unroll_check` cannot split) runs whole
  in the sandbox and reports a pass marker carrying a per-run nonce; a program that introspects the
  harness can forge that marker (tested), so prefer splittable tests where reward hacking matters.

Reward functions follow `reasonloop.rewards.core`: `fn(prompts, completions, **columns)`; rows
without tests score None.
"""

from __future__ import annotations

import ast
import json
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from reasonloop.rewards.answer_format import last_answer
from reasonloop.sandbox import ExecResult, Limits, Sandbox
from reasonloop.sandbox.pool import Job, SandboxPool

FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)
DEFAULT_LIMITS = Limits(wall_time_s=2.0, cpu_time_s=2, memory_mb=512, max_processes=8,
                        max_output_bytes=1 << 16)


def extract_code(completion: str) -> str:
    """The program in a completion: inside the last <answer>...</answer> if any, then the last
    ```python fence (an unclosed final fence counts: generation may stop at a length limit), else
    the raw text."""
    answer = last_answer(completion)
    text = answer if answer is not None else completion
    fences = FENCE.findall(text)
    return (fences[-1] if fences else text).strip("\n")


@dataclass(frozen=True)
class TestOutcome:
    passed: int
    total: int
    statuses: tuple[str, ...]  # sandbox status of each run (one per io case, one for assert style)
    wall_time: float  # summed over runs

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class _SplitAssert:
    expr: str  # evaluated in the sandbox
    expected: Any  # compared in the parent


def _split(test: str) -> _SplitAssert | None:
    """`assert EXPR == LITERAL` -> its parts; None for any other test shape."""
    try:
        tree = ast.parse(test.strip())
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    cmp = tree.body[0].test
    if not (isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq)):
        return None
    try:
        expected = ast.literal_eval(cmp.comparators[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return _SplitAssert(ast.unparse(cmp.left), expected)


def unroll_check(test_module: str, entry_point: str) -> tuple[list[str], str] | None:
    """HumanEval's `def check(candidate): assert ...` as separate splittable asserts plus a setup.

    Returns (asserts, setup) when every statement of `check` is `assert EXPR == LITERAL`: the asserts
    keep `candidate`, which the setup binds to the entry point, and the setup holds the module's other
    statements but not `check` itself, so the expected literals never enter the sandbox. None for any
    other shape (loops, tolerances, helpers): then the whole check runs in the sandbox.
    """
    try:
        tree = ast.parse(test_module)
    except SyntaxError:
        return None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check" and n.args.args]
    if len(checks) != 1:
        return None
    check = checks[0]
    body = [n for n in check.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    asserts = [ast.unparse(n) for n in body]
    if not asserts or any(_split(a) is None for a in asserts):
        return None
    rest = ast.unparse(ast.Module(body=[n for n in tree.body if n is not check], type_ignores=[]))
    return asserts, f"{rest}\n{check.args.args[0].arg} = {entry_point}\n"


def assert_harness(code: str, tests: Sequence[str], setup: str, nonce: str) -> str:
    """Program + harness: each test runs in its own try so one failure does not hide the others."""
    lines = [code, "", "# --- reasonloop test harness ---", setup,
             "def __rl_emit(i, kind, payload=''):",
             f"    print('\\n{nonce}|%d|%s|%s' % (i, kind, payload), flush=True)"]
    for i, test in enumerate(tests):
        split = _split(test)
        body = (f"__rl_emit({i}, 'value', repr(eval(compile({split.expr!r}, '<test>', 'eval'))))" if split
                else f"exec(compile({test!r}, '<test>', 'exec')); __rl_emit({i}, 'pass')")
        lines += ["try:", f"    {body}", "except BaseException as __rl_e:",
                  f"    __rl_emit({i}, 'error', type(__rl_e).__name__)"]
    return "\n".join(lines) + "\n"


def _assert_passes(stdout: str, tests: Sequence[str], nonce: str) -> int:
    reports: dict[int, tuple[str, str]] = {}
    for m in re.finditer(rf"^{nonce}\|(\d+)\|(\w+)\|(.*)$", stdout, re.M):
        reports.setdefault(int(m.group(1)), (m.group(2), m.group(3)))  # first report wins
    passed = 0
    for i, test in enumerate(tests):
        kind, payload = reports.get(i, ("missing", ""))
        split = _split(test)
        if split is None:
            passed += kind == "pass"
        elif kind == "value":
            passed += _literal_equals(payload, split.expected)
    return passed


def _literal_equals(payload: str, expected: Any) -> bool:
    try:
        return ast.literal_eval(payload) == expected
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def outputs_match(actual: str, expected: str) -> bool:
    """Line-by-line equality ignoring trailing spaces and trailing blank lines (judge convention)."""
    def norm(s: str) -> list[str]:
        return [line.rstrip() for line in s.rstrip().splitlines()]
    return norm(actual) == norm(expected)


class CodeVerifier:
    """Runs (code, tests) pairs concurrently in one sandbox pool; caches recent outcomes so the
    pass-rate and efficiency rewards of the same batch share one execution."""

    def __init__(self, sandbox: Sandbox | None = None, workers: int | None = None, cache_size: int = 4096):
        self.sandbox = sandbox or Sandbox(DEFAULT_LIMITS)
        self.pool = SandboxPool(self.sandbox, workers)
        self._cache: OrderedDict[str, TestOutcome] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def check(self, code: str, tests: Sequence, style: str = "assert", setup: str = "") -> TestOutcome:
        return self.check_many([(code, tests, style, setup)])[0]

    def check_many(self, rows: Sequence[tuple[str, Sequence, str, str]]) -> list[TestOutcome]:
        """rows: (code, tests, style, setup). All runs of all rows share the pool; identical rows (a
        sharpened policy's samples of one prompt) run once."""
        keys = [json.dumps(row, sort_keys=True, default=str) for row in rows]
        first: dict[str, int] = {}  # key -> its first row
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        todo = [i for k, i in first.items() if k not in self._cache]
        plans = [self._plan(*rows[i]) for i in todo]
        results = self.pool.run_many([job for jobs, _ in plans for job in jobs])
        start = 0
        for i, (jobs, score) in zip(todo, plans):
            self._remember(keys[i], score(results[start:start + len(jobs)]))
            start += len(jobs)
        with self._lock:
            return [self._cache[k] for k in keys]

    def _remember(self, key: str, outcome: TestOutcome) -> None:
        with self._lock:
            self._cache[key] = outcome
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _plan(self, code: str, tests: Sequence, style: str, setup: str):
        """Jobs to run and a function scoring their results."""
        if style == "io":
            jobs = [Job(code, case["input"]) for case in tests]

            def score_io(results: list[ExecResult]) -> TestOutcome:
                passed = sum(r.ok and outputs_match(r.stdout, c["output"]) for r, c in zip(results, tests))
                return _outcome(passed, len(tests), results)
            return jobs, score_io
        if style != "assert":
            raise ValueError(f"unknown test style {style!r}; expected 'io' or 'assert'")
        nonce = secrets.token_hex(16)

        def score_assert(results: list[ExecResult]) -> TestOutcome:
            passed = _assert_passes(results[0].stdout, tests, nonce) if results[0].status in ("ok", "runtime_error") else 0
            return _outcome(passed, len(tests), results)
        return [Job(assert_harness(code, tests, setup, nonce))], score_assert


def _outcome(passed: int, total: int, results: list[ExecResult]) -> TestOutcome:
    return TestOutcome(passed, total, tuple(r.status for r in results), sum(r.wall_time for r in results))


def program_for(completion: str, code_prefix: str = "", entry_point: str = "") -> str:
    """The program to test. With a `code_prefix` (HumanEval's signature + docstring) the prefix
    always comes first, so its imports hold; a completion that redefines `entry_point` follows it,
    otherwise the completion is taken as the body continuing the prefix."""
    code = extract_code(completion)
    if not code_prefix:
        return code
    if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        return code_prefix + "\n" + code
    return code_prefix + code


def _rows(completions, tests, test_style=None, test_setup=None, code_prefix=None, entry_point=None):
    """(row index, (program, tests, style, setup)) for rows that have tests."""
    n = len(completions)
    col = lambda c, default: c if c is not None else [default] * n  # noqa: E731
    styles, setups = col(test_style, "assert"), col(test_setup, "")
    prefixes, entries = col(code_prefix, ""), col(entry_point, "")
    return [(i, (program_for(completions[i], prefixes[i] or "", entries[i] or ""), tests[i],
                 styles[i] or "assert", setups[i] or ""))
            for i in range(n) if tests[i]]


def _outcomes(verifier: "CodeVerifier", completions, tests, columns) -> list[TestOutcome | None]:
    rows = _rows(completions, tests or [None] * len(completions), **columns)
    out: list[TestOutcome | None] = [None] * len(completions)
    for (i, _row), o in zip(rows, verifier.check_many([r for _, r in rows])):
        out[i] = o
    return out


_COLUMNS = ("test_style", "test_setup", "code_prefix", "entry_point")


def _test_columns(kwargs: dict) -> dict:
    return {k: kwargs.get(k) for k in _COLUMNS}


def pass_rate_reward(verifier: CodeVerifier):
    """Fraction of test cases passed (0 for anything that fails to run)."""
    def code_pass_rate(prompts, completions, tests=None, **columns):
        outcomes = _outcomes(verifier, completions, tests, _test_columns(columns))
        return [None if o is None else o.pass_rate for o in outcomes]
    return code_pass_rate


def correct_reward(verifier: CodeVerifier):
    """1 when every test passes, else 0: the verdict `Task.is_correct` gives, so eval and reward agree."""
    def code_correct(prompts, completions, tests=None, **columns):
        outcomes = _outcomes(verifier, completions, tests, _test_columns(columns))
        return [None if o is None else float(o.all_passed) for o in outcomes]
    return code_correct


def efficiency_reward(verifier: CodeVerifier):
    """1 - (mean wall time per run / wall limit) when every test passes, else 0: rewards speed only
    among correct programs, so it cannot be earned by failing fast."""
    limit = verifier.sandbox.limits.wall_time_s

    def code_efficiency(prompts, completions, tests=None, **columns):
        outcomes = _outcomes(verifier, completions, tests, _test_columns(columns))
        return [None if o is None else
                (max(0.0, 1.0 - o.wall_time / max(len(o.statuses), 1) / limit) if o.all_passed else 0.0)
                for o in outcomes]
    return code_efficiency


SYNTAX_CHECK = "import sys\ncompile(sys.stdin.read(), 'main.py', 'exec')\n"


def compiles_reward(verifier: CodeVerifier):
    """1 if the extracted Python compiles, else 0. Compilation runs in the sandbox too: the parser
    is attack surface (deeply nested input, huge literals)."""
    def code_compiles(prompts, completions, **_):
        jobs = [Job(SYNTAX_CHECK, extract_code(c)) for c in completions]
        return [float(r.ok) for r in verifier.pool.run_many(jobs)]
    return code_compiles
