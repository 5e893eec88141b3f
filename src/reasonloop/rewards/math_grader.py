"""Math answer grading: extraction, anti-hacking checks, numeric and symbolic equivalence.

Pipeline for one `(completion, gold)` pair (see docs/verifiers.md):

1. **Hack checks** (`detect_hack`): over-long output, missing/duplicated `<answer>` tags (a bare
   `\\boxed{}` has no tag), empty `<think>` blocks, padding after the answer, over-long answers.
2. **Extraction** (`extract_answer`): `<answer>` tags, then `\\boxed{}`, then "the answer is X", then
   the last number (the fallbacks only when the policy does not require tags).
3. **Candidate checks**: a single gold value must be met by a single predicted value (listing many
   numbers fails), a numeric gold by a number literal (echoing the question's `12+7` fails), and an
   expression copied from the prompt fails unless the gold itself is in the prompt.
4. **Cheap equality** in-process: normalised strings, then exact rational / relative-tolerance
   numbers. Most GSM8K/AIME answers stop here, which is what makes 10k answers/s possible.
5. **Symbolic equality** via math-verify (sympy underneath) in a `VerifierPool` of worker processes.
   math-verify's own `signal.alarm` timeouts only work on a main thread, so they are disabled and the
   parent enforces a hard deadline: a hung worker is killed and replaced, and the pair scores wrong.
   math-verify misreads `<answer>`/`<think>` markup, so it only ever sees the extracted answer text.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from reasonloop.rewards.answer_format import answer_blocks, last_answer, think_blocks
from reasonloop.sandbox.records import load_stretch

PHRASE_RE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)?\s*[:=]?\s*([^\n]+)", re.I)
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
PLAIN_NUMBER_RE = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")
FRACTION_RE = re.compile(r"^(-?\d+)/(\d+)$")
LATEX_FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\{(-?\d+)\}\{(\d+)\}$")
LATEX_FRAC_SHORT_RE = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")
# operators between digits: what an unevaluated expression such as `12+7` or `3*4` looks like
EXPRESSION_RE = re.compile(r"\d\s*(?:[-+*^×÷]|\\times|\\cdot|\\div)\s*[\d(]|\)\s*[-+*/^]")
ALTERNATIVES_RE = re.compile(r"\s*(?:,|;|\bor\b|\band\b|\n)\s*|(?<=\d)\s+(?=-?\d)")  # `12 7` is two values
UNIT_WORDS_RE = re.compile(r"^(-?[\d.,/]+)\s*[a-zA-Z][a-zA-Z .]*$")

SYMBOLIC_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class GradePolicy:
    """What a completion must look like to earn accuracy credit. Defaults suit the
    `<think>...</think><answer>...</answer>` format every reasonloop prompt asks for."""

    require_answer_tag: bool = True  # a bare `\boxed{}` or trailing number earns nothing
    require_think: bool = True  # a `<think>` block with at least `min_think_chars` non-space chars
    min_think_chars: int = 1
    max_completion_chars: int = 16_000  # longer outputs are padding, not reasoning
    max_answer_chars: int = 200  # an answer is a value, not an essay of candidates
    max_trailing_chars: int = 0  # non-space text allowed after `</answer>`
    rel_tol: float = 1e-6  # relative, never absolute: `0` must not match `3e-5`
    symbolic: bool = True  # fall back to math-verify when cheap equality is undecided
    symbolic_timeout_s: float = SYMBOLIC_TIMEOUT_S


LENIENT = GradePolicy(require_answer_tag=False, require_think=False, max_trailing_chars=10**9)
"""For grading free-form outputs (e.g. a base model on GSM8K): extraction falls back to boxed,
"the answer is" and the last number. Not for RL rewards: a policy can game the fallbacks."""


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # "match_string" | "match_numeric" | "match_symbolic" | why it failed
    extracted: str | None = None


# ---------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}`, braces matched (regex cannot nest)."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    return _balanced(text, starts[-1])


def all_boxed(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        content = _balanced(text, m.end())
        if content is not None:
            out.append(content)
    return out


def _balanced(text: str, start: int) -> str | None:
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def extract_answer(completion: str, require_tag: bool = True) -> tuple[str | None, str]:
    """The predicted answer and where it came from: answer_tag, boxed, phrase, last_number or none.

    Inside `<answer>` a `\\boxed{}` is unwrapped. The last tag wins; `detect_hack` has already
    refused completions with several tags when it matters.
    """
    tag = last_answer(completion)
    if tag is not None:
        inner = tag.strip()
        return (last_boxed(inner) or inner).strip(), "answer_tag"
    if require_tag:
        return None, "none"
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed.strip(), "boxed"
    phrases = PHRASE_RE.findall(completion)
    if phrases:
        return phrases[-1].strip().rstrip("."), "phrase"
    numbers = NUMBER_RE.findall(completion)
    if numbers:
        return numbers[-1], "last_number"
    return None, "none"


def gold_from_solution(solution: str) -> str | None:
    """The reference answer inside a worked solution: MATH's last `\\boxed{}` or GSM8K's `#### 42`."""
    if "####" in solution:
        return solution.rsplit("####", 1)[1].strip().replace(",", "") or None
    boxed = last_boxed(solution)
    return boxed.strip() if boxed is not None else None


# ---------------------------------------------------------------- hack checks


def detect_hack(completion: str, policy: GradePolicy) -> str | None:
    """Why this completion may not earn accuracy credit whatever its answer, or None.

    Each check answers one known hack (tests/rewards/test_hacking.py proves each)."""
    if len(completion) > policy.max_completion_chars:
        return "too_long"
    tags = answer_blocks(completion)
    if policy.require_answer_tag and not tags:
        return "no_answer_tag"
    if len(tags) > 1:
        return "multiple_answers"
    if tags and len(set(map(str.strip, all_boxed(tags[0])))) > 1:
        return "multiple_answers"
    if policy.require_think:
        thoughts = think_blocks(completion)
        if not thoughts or len("".join(thoughts[0].split())) < policy.min_think_chars:
            return "empty_think"
    if tags:
        tail = completion[completion.rfind("</answer>") + len("</answer>") :]
        if len("".join(tail.split())) > policy.max_trailing_chars:
            return "trailing_text"
        if len(tags[0].strip()) > policy.max_answer_chars:
            return "answer_too_long"
    return None


# ---------------------------------------------------------------- normalisation


def normalize(text: str) -> str:
    """Canonical surface form: no `$`, `\\text{}` units, `\\left/\\right`, spaces, or trailing dot."""
    s = text.strip()
    s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}", "", s) if re.search(r"\d", s) else s
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{(.*?)\}", r"\1", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    for junk in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\$", "$", "\\%", "%"):
        s = s.replace(junk, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = "".join(s.split()).rstrip(".")
    if THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    return s


def parse_number(text: str) -> Fraction | None:
    """An exact rational for a number literal (int, decimal, sci, `a/b`, `\\frac{a}{b}`), else None.

    Trailing unit words (`18 dollars`) are dropped; any operator makes it not a literal."""
    s = normalize(text)
    m = UNIT_WORDS_RE.match(s)
    if m:
        s = m.group(1).rstrip(".")
    try:
        if PLAIN_NUMBER_RE.match(s):
            return Fraction(s)
        if m := FRACTION_RE.match(s):
            return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
        if m := LATEX_FRAC_RE.match(s) or LATEX_FRAC_SHORT_RE.match(s):
            sign = -1 if m.group(1) else 1
            return sign * Fraction(int(m.group(2)), int(m.group(3))) if int(m.group(3)) else None
    except (ValueError, OverflowError):
        return None
    return None


def numbers_close(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    """Exact for rationals, else relative tolerance only (an absolute one credits `0` for `3e-5`)."""
    if a == b:
        return True
    return abs(a - b) <= rel_tol * max(abs(a), abs(b))


def count_alternatives(answer: str) -> int:
    """How many separate values an answer lists (`3, 12 or 5` -> 3); thousands commas are not lists."""
    s = answer.strip()
    if THOUSANDS_RE.match(s.replace(" ", "")):
        return 1
    inner = re.sub(r"^\\\{|\\\}$|^[\[\(\{]|[\]\)\}]$", "", s)
    return len([p for p in ALTERNATIVES_RE.split(inner) if p.strip()])


def is_expression(answer: str) -> bool:
    """True when the answer still contains arithmetic between numbers (an unevaluated expression)."""
    return bool(EXPRESSION_RE.search(normalize(answer)))


# ---------------------------------------------------------------- grading


def grade(completion: str, gold: str, prompt: str = "", policy: GradePolicy = GradePolicy()) -> Verdict:
    """Grade one completion; symbolic fallbacks run in the default worker pool under a hard timeout."""
    return grade_batch([completion], [gold], [prompt], policy)[0]


def grade_batch(
    completions: Sequence[str],
    golds: Sequence[str],
    prompts: Sequence[str] | None = None,
    policy: GradePolicy = GradePolicy(),
    pool: "VerifierPool | None" = None,
) -> list[Verdict]:
    """Grade many pairs: cheap checks in-process, undecided pairs in parallel symbolic workers."""
    prompts = prompts if prompts is not None else [""] * len(completions)
    if not len(completions) == len(golds) == len(prompts):
        raise ValueError(f"{len(completions)} completions, {len(golds)} golds, {len(prompts)} prompts")
    verdicts: list[Verdict | None] = []
    pending: list[tuple[int, str, str]] = []
    for i, (c, g, p) in enumerate(zip(completions, golds, prompts)):
        verdict, pred = _grade_cheap(c, str(g), p, policy)
        verdicts.append(verdict)
        if verdict is None:
            pending.append((i, str(g), pred))
    if pending:
        results = symbolic_equal_many([(g, p) for _, g, p in pending], policy.symbolic_timeout_s, pool)
        for (i, _, pred), (ok, status) in zip(pending, results):
            verdicts[i] = Verdict(ok, "match_symbolic" if ok else ("mismatch" if status == "ok" else status), pred)
    return verdicts  # type: ignore[return-value]


def _grade_cheap(completion: str, gold: str, prompt: str, policy: GradePolicy) -> tuple[Verdict | None, str]:
    """A final verdict when string/numeric rules decide, else (None, prediction) for the symbolic stage."""
    hack = detect_hack(completion, policy)
    if hack:
        return Verdict(False, hack), ""
    pred, _ = extract_answer(completion, policy.require_answer_tag)
    if not pred:
        return Verdict(False, "no_answer"), ""
    if count_alternatives(pred) > count_alternatives(gold):  # before string equality: `12 7` is not `127`
        return Verdict(False, "multiple_candidates", pred), pred
    npred, ngold = normalize(pred), normalize(gold)
    if npred == ngold:
        return Verdict(True, "match_string", pred), pred
    gold_num = parse_number(gold)
    if gold_num is not None:
        pred_num = parse_number(pred)
        if pred_num is not None:
            ok = numbers_close(pred_num, gold_num, policy.rel_tol)
            return Verdict(ok, "match_numeric" if ok else "mismatch", pred), pred
        if is_expression(pred):
            return Verdict(False, "unevaluated_expression", pred), pred
    if _echoes_prompt(npred, ngold, prompt):
        return Verdict(False, "echoes_prompt", pred), pred
    if not policy.symbolic:
        return Verdict(False, "mismatch", pred), pred
    return None, pred


def _echoes_prompt(npred: str, ngold: str, prompt: str) -> bool:
    """A non-literal answer copied from the prompt (`(x+1)^2-x^2` for "simplify (x+1)^2-x^2")."""
    if not prompt or parse_number(npred) is not None or len(npred) < 3:
        return False
    nprompt = normalize(prompt)
    return npred in nprompt and ngold not in nprompt


def _as_latex(s: str) -> str:
    return s if "$" in s else f"${s}$"


def symbolic_equal(gold: str, pred: str) -> bool:
    """math-verify equivalence with its signal-based timeouts off (the caller enforces one)."""
    from math_verify import parse, verify

    g = parse(_as_latex(gold), parsing_timeout=None)
    p = parse(_as_latex(pred), parsing_timeout=None)
    return bool(g and p and verify(g, p, timeout_seconds=None))


def _symbolic_job(pair: tuple[str, str]) -> bool:
    return symbolic_equal(*pair)


_SYMBOLIC_CACHE: dict[tuple[str, str], bool] = {}
SYMBOLIC_CACHE_SIZE = 200_000


def symbolic_equal_many(
    pairs: Sequence[tuple[str, str]], timeout_s: float, pool: "VerifierPool | None" = None
) -> list[tuple[bool, str]]:
    """`(equal, status)` per (gold, pred) pair; status "ok", "timeout" or "error". Completed
    comparisons are cached (RL groups repeat the same answers); failures are retried next time."""
    known = {p: (_SYMBOLIC_CACHE[p], "ok") for p in pairs if p in _SYMBOLIC_CACHE}
    todo = sorted(set(pairs) - set(known))
    if todo:
        outcomes = (pool or default_pool()).map(_symbolic_job, todo, timeout_s)
        if len(_SYMBOLIC_CACHE) + len(todo) > SYMBOLIC_CACHE_SIZE:
            _SYMBOLIC_CACHE.clear()
        for pair, out in zip(todo, outcomes):
            known[pair] = (out.status == "ok" and bool(out.value), out.status)
            if out.status == "ok":
                _SYMBOLIC_CACHE[pair] = bool(out.value)
    return [known[p] for p in pairs]


# ---------------------------------------------------------------- worker pool


@dataclass(frozen=True)
class JobOutcome:
    value: Any
    status: str  # "ok" | "timeout" | "error"


def _worker_main(conn: Connection) -> None:
    """Worker loop: import the heavy libraries, say ready, then answer `(fn, arg)` jobs forever."""
    import math_verify  # noqa: F401  (imported before "ready" so the first deadline is fair)

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": we enforce it

    conn.send(("ready", None))
    while True:
        try:
            fn, arg = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", fn(arg)))
        except Exception as exc:  # reported to the parent as a failed job, never a dead worker
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    ready: bool = False


class VerifierPool:
    """Worker processes with a hard per-job deadline; a job past it has its worker killed and
    replaced (a thread cannot be interrupted inside sympy, a process can).

    Workers are fresh interpreters (`python -m reasonloop.rewards.math_grader FD`) talking over a
    socketpair, not multiprocessing children: spawn/forkserver re-import the caller's `__main__`
    (re-running an unguarded training script), and fork copies a multi-threaded torch process.
    """

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or max(1, min(4, os.cpu_count() or 1))
        self._workers = [self._spawn() for _ in range(self.num_workers)]
        self.replaced = 0  # workers killed after a timeout or crash

    @staticmethod
    def _spawn() -> _Worker:
        ours, theirs = socket.socketpair()
        src_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src_root, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "reasonloop.rewards.math_grader", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        return _Worker(proc, Connection(ours.detach()))

    def _replace(self, slot: int) -> None:
        old = self._workers[slot]
        old.proc.kill()
        old.proc.wait()
        old.conn.close()
        self._workers[slot] = self._spawn()
        self.replaced += 1

    def map(self, fn: Callable[[Any], Any], args: Sequence[Any], timeout_s: float) -> list[JobOutcome]:
        """`fn(arg)` for each arg (fn must be a picklable module-level function), in order. The deadline is
        `timeout_s` stretched by the machine's overload (`sandbox.records.load_stretch`): a starved worker is not
        a runaway one."""
        results: list[JobOutcome | None] = [None] * len(args)
        queue = deque(enumerate(args))
        deadline_s = timeout_s * load_stretch()  # read once per call: a syscall pair, not one per job
        busy: dict[int, tuple[int, float]] = {}  # slot -> (job index, deadline)
        while queue or busy:
            for slot, w in enumerate(self._workers):
                if w.ready and slot not in busy and queue:
                    idx, arg = queue.popleft()
                    w.conn.send((fn, arg))
                    busy[slot] = (idx, time.monotonic() + deadline_s)
            waiting = [w.conn for s, w in enumerate(self._workers) if s in busy or not w.ready]
            next_deadline = min((d for _, d in busy.values()), default=time.monotonic() + 60.0)
            ready = wait(waiting, max(0.0, next_deadline - time.monotonic()))
            for slot, w in enumerate(self._workers):
                if w.conn in ready:
                    try:
                        status, value = w.conn.recv()
                    except (EOFError, OSError):
                        status, value = "error", "worker died"
                        self._replace(slot)
                    if status == "ready":
                        w.ready = True
                        continue
                    if slot in busy:
                        results[busy.pop(slot)[0]] = JobOutcome(value, status)
                elif slot in busy and time.monotonic() >= busy[slot][1]:
                    results[busy.pop(slot)[0]] = JobOutcome(None, "timeout")
                    self._replace(slot)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for w in self._workers:
            w.proc.kill()
            w.proc.wait()
            w.conn.close()
        self._workers = []


_DEFAULT_POOL: VerifierPool | None = None


def default_pool() -> VerifierPool:
    """The process-wide pool, started on first symbolic comparison and stopped at exit."""
    global _DEFAULT_POOL
    if _DEFAULT_POOL is None:
        _DEFAULT_POOL = VerifierPool()
        atexit.register(_DEFAULT_POOL.close)
    return _DEFAULT_POOL


# ---------------------------------------------------------------- reward functions


def make_accuracy_reward(policy: GradePolicy = GradePolicy()) -> Callable[..., list[float]]:
    """A TRL-signature reward: 1.0 for a correct answer, 0.0 otherwise (hacks included)."""

    def accuracy(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[str], **_: Any) -> list[float]:
        return [float(v.correct) for v in grade_batch(completions, answer, prompts, policy)]

    return accuracy





if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])))
