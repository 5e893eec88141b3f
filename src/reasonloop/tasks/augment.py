"""Augmentation for procedural problems: number substitution and counterfactual variants.

A problem is turned into a `NumberTemplate` (its text with each number replaced by a slot). New
numbers are drawn with the same sign and digit count, and the answer is recomputed by a `solver`
that maps the new numbers to the new answer (for arithmetic prompts, `solve_expression` evaluates
the expression in the text). Without a solver no answer could be trusted, so none is produced.

A *counterfactual* variant changes the numbers so that the original answer becomes wrong: a model
that still answers the original has memorised the item, and a verifier that still accepts it is
broken. `counterfactual` retries until the recomputed answer differs.
"""

from __future__ import annotations

import ast
import operator
import random
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Sequence

from reasonloop.data.records import Example

INT_RE = re.compile(r"(?<![\d.])-?\d+(?![\d.])")
Solver = Callable[[str, Sequence[int]], str | None]  # (new prompt, new numbers) -> answer or None
MAX_TRIES = 50


@dataclass(frozen=True)
class NumberTemplate:
    """`text` with `{0}`, `{1}` ... where the integers were (braces in the text are escaped)."""

    text: str
    numbers: tuple[int, ...]

    def fill(self, numbers: Sequence[int]) -> str:
        return self.text.format(*numbers)


def templatize(text: str) -> NumberTemplate:
    """Slot every integer literal (decimals are left alone: their precision carries meaning)."""
    numbers: list[int] = []
    parts, last = [], 0
    for m in INT_RE.finditer(text):
        parts.append(_escape(text[last : m.start()]) + "{" + str(len(numbers)) + "}")
        numbers.append(int(m.group()))
        last = m.end()
    parts.append(_escape(text[last:]))
    return NumberTemplate("".join(parts), tuple(numbers))


def _escape(s: str) -> str:
    return s.replace("{", "{{").replace("}", "}}")


def similar_number(n: int, rng: random.Random) -> int:
    """Same sign and digit count (keeps the problem's difficulty and any `-` parsing intact)."""
    digits = len(str(abs(n)))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    value = rng.randint(low, 10**digits - 1)
    return -value if n < 0 else value


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def eval_arithmetic(expression: str) -> Fraction:
    """Exact value of `+ - * /` and parentheses over integers (ast walk, never `eval`)."""

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -walk(node.operand) if isinstance(node.op, ast.USub) else walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not plain arithmetic: {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body)


def solve_expression(prompt: str, _numbers: Sequence[int]) -> str | None:
    """Solver for prompts that contain one arithmetic expression ("What is 12 + 7 * 3?").
    Division by zero or a non-integer result returns None (the draw is rejected)."""
    candidates = re.findall(r"[-+*/()\d\s]{3,}", prompt.replace("×", "*").replace("÷", "/"))
    expressions = [c.strip() for c in candidates if re.search(r"\d\s*[-+*/]\s*[-(\d]", c)]
    if len(expressions) != 1:
        return None
    try:
        value = eval_arithmetic(expressions[0])
    except (ValueError, ZeroDivisionError, SyntaxError):
        return None
    return str(value.numerator) if value.denominator == 1 else None


def substitute_numbers(example: Example, solver: Solver, rng: random.Random) -> Example | None:
    """A copy of `example` with fresh numbers and a recomputed answer, or None if no draw solves."""
    template = templatize(example.prompt)
    if not template.numbers:
        return None
    for _ in range(MAX_TRIES):
        numbers = [similar_number(n, rng) for n in template.numbers]
        prompt = template.fill(numbers)
        answer = solver(prompt, numbers)
        if answer is not None:
            meta = {**example.meta, "id": f"{example.id}#sub{rng.randrange(10**9)}", "augmented_from": example.id}
            return replace(example, prompt=prompt, answer=answer, meta=meta)
    return None


def counterfactual(example: Example, solver: Solver, rng: random.Random) -> Example | None:
    """A number-substituted variant whose answer differs from the original's (None if none found)."""
    for _ in range(MAX_TRIES):
        variant = substitute_numbers(example, solver, rng)
        if variant is None:
            return None
        if variant.answer != example.answer:
            return replace(variant, meta={**variant.meta, "counterfactual_of": example.answer})
    return None


def augment(examples: Sequence[Example], solver: Solver, copies: int, seed: int = 0) -> list[Example]:
    """`copies` substituted variants per example (deterministic in seed); originals not included."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        for _ in range(copies):
            variant = substitute_numbers(ex, solver, rng)
            if variant is not None:
                out.append(variant)
    return out
