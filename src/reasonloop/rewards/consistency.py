"""Consistency rewards at several granularities, checked exactly (MGRCR and AHRO, docs/frameworks.md).

- **step validity**: every equation a completion writes (`17+4=21`, `(3*4)/2 = 6`) is arithmetically true,
  evaluated exactly with rational numbers (no floats, no eval): the fraction of its equations that hold;
  None when it writes none (not applicable). It checks each step on its own terms, not against the problem
  (that is `step_tokens.ArithmeticStepOracle`): a wrong copy of an operand with right arithmetic is valid.
- **answer agreement**: the result of the last written equation is the final `<answer>` (the steps lead
  to the answer given): 1 or 0; None without an equation or an answer.
- **group agreement**: the share of the *other* samples of the same prompt that give the same final answer
  (self-consistency as a reward); 0 for a sample without an answer.
- **group diversity**: 1 / (copies of this exact completion in its group): 1 for a unique sample, 1/G when
  all G are the same text. It is the regulariser against the collapse that agreement alone rewards.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Hashable, Sequence
from fractions import Fraction
from typing import Any

from reasonloop.rewards.answer_format import single_answer

# an arithmetic expression (digits, + - * /, parentheses, spaces, decimal points) '=' a number
EQUATION_RE = re.compile(r"([\d.()+\-*/ ]*\d[\d.()+\-*/ ]*)=\s*(-?\d+(?:\.\d+)?)")


def exact_value(expr: str) -> Fraction | None:
    """The exact value of an arithmetic expression of numbers, + - * / and parentheses; None when it is not
    one (or divides by zero)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = ev(node.operand)
            return v if isinstance(node.op, ast.UAdd) else -v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            return a / b  # ZeroDivisionError is caught below
        raise ValueError("not arithmetic")

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError):
        return None


def equations(completion: str) -> list[tuple[str, str]]:
    """(left side, right side) of every equation in the completion's reasoning (the text before `<answer>`),
    in order; steps are split at ';' and line breaks, so `17+4=21;21-9=12` has two. A left side without an
    operation (`21=21`) is no computation and is skipped, so restating numbers earns no validity."""
    head = completion.split("<answer>", 1)[0].replace("<think>", " ").replace("</think>", " ")
    out = []
    for piece in re.split(r"[;\n]", head):
        m = EQUATION_RE.search(piece)
        if m and re.search(r"[+\-*/]", m.group(1).strip()[1:]):  # a computation, not `5=5` (free to write)
            out.append((m.group(1).strip(), m.group(2)))
    return out


def step_validity(completion: str) -> float | None:
    """The fraction of the completion's equations that are exactly true; None without any."""
    eqs = equations(completion)
    if not eqs:
        return None
    ok = sum(1 for lhs, rhs in eqs if (v := exact_value(lhs)) is not None and v == Fraction(rhs))
    return ok / len(eqs)


def answer_agreement(completion: str) -> float | None:
    """1 when the last equation's right side equals the final answer (exactly, as numbers), else 0; None
    without an equation or a single parseable numeric answer."""
    eqs, answer = equations(completion), single_answer(completion)
    if not eqs or answer is None:
        return None
    try:
        return float(Fraction(eqs[-1][1]) == Fraction(answer.strip()))
    except (ValueError, ZeroDivisionError):
        return None


def group_agreement(answers: Sequence[Hashable | None]) -> list[float]:
    """For each sample of one prompt: the share of the other samples with the same (non-None) answer."""
    counts = Counter(a for a in answers if a is not None)
    others = max(len(answers) - 1, 1)
    return [0.0 if a is None else (counts[a] - 1) / others for a in answers]


def group_diversity(completions: Sequence[str]) -> list[float]:
    """For each sample of one prompt: 1 / the number of identical copies of its text in the group."""
    counts = Counter(completions)
    return [1.0 / counts[c] for c in completions]


def step_validity_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
    """`step_validity` with TRL's reward signature (None: no equation, not applicable)."""
    return [step_validity(c) for c in completions]


def answer_agreement_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
    """`answer_agreement` with TRL's reward signature."""
    return [answer_agreement(c) for c in completions]
