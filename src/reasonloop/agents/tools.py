"""Tools a policy can call in the middle of a rollout: plain functions `fn(argument: str) -> str`.

A tool receives the text between `<tool name="...">` and `</tool>` and returns the observation text.
It signals a failure by raising `ToolError` (any other exception is caught too); `call_tool` turns
every failure, and a call that runs past its time limit, into an error observation and a kind that
the environment counts. Built-ins:

- `calc`: arithmetic by walking the expression's AST (numbers, + - * / // % **, unary minus,
  parentheses); never `eval`; exponents, operand sizes and expression length are bounded;
- `python`: the program runs in `reasonloop.sandbox` (namespaces, rlimits, its own wall and CPU limits);
  the observation is its stdout (or the error's last line);
- `lookup`: the best-matching entry of a local corpus (key/text pairs) by word overlap.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**30
MAX_OBSERVATION_CHARS = 200


class ToolError(Exception):
    """A tool's own failure (bad input, a runtime error); the message becomes the error observation."""


# -- calculator ------------------------------------------------------------------------------------------

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """The value of an arithmetic expression, evaluated by walking its AST (no `eval`).

    Integers stay exact; a division gives a float, printed without a trailing '.0' when whole."""
    text = expression.strip()
    if not text:
        raise ToolError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {text!r}") from None
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is larger than {MAX_EXPONENT}")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
        if isinstance(value, complex):
            raise ToolError("complex result")
        if abs(value) > MAX_MAGNITUDE:
            raise ToolError("result too large")
        return value
    raise ToolError(f"unsupported syntax: {type(node).__name__}")


# -- python in the sandbox ------------------------------------------------------------------------------

class PythonTool:
    """Run the call's text as a Python program in the sandbox; the observation is its stdout.

    The sandbox's own limits (wall time, CPU, memory, processes) bound the run; a program that fails
    raises `ToolError` with its status and the last line of stderr."""

    def __init__(self, wall_time_s: float = 2.0, memory_mb: int = 256):
        from reasonloop.sandbox import Limits, Sandbox

        self.sandbox = Sandbox(Limits(wall_time_s=wall_time_s, cpu_time_s=max(1, int(wall_time_s)),
                                      memory_mb=memory_mb, max_processes=4, max_output_bytes=1 << 14))

    def __call__(self, code: str) -> str:
        result = self.sandbox.run(code)
        if not result.ok:
            last = (result.stderr.strip().splitlines() or [""])[-1]
            raise ToolError(f"{result.status}: {last}".rstrip(": "))
        return result.stdout.strip()


# -- lookup over a local corpus -------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")


class Lookup:
    """The corpus entry whose key and text share the most words with the query (ties: the first).

    `corpus`: {key: text}, or a path to a JSONL file of {"key": ..., "text": ...} records."""

    def __init__(self, corpus: dict[str, str] | str | Path):
        if isinstance(corpus, (str, Path)):
            lines = Path(corpus).read_text().splitlines()
            corpus = {r["key"]: r["text"] for r in map(json.loads, filter(str.strip, lines))}
        self.entries = [(key, text, set(_WORD.findall(f"{key} {text}".lower()))) for key, text in corpus.items()]

    def __call__(self, query: str) -> str:
        words = set(_WORD.findall(query.lower()))
        if not words:
            raise ToolError("empty query")
        best = max(self.entries, key=lambda e: len(words & e[2]), default=None)
        if best is None or not words & best[2]:
            raise ToolError(f"nothing found for {query.strip()!r}")
        return best[1]


# -- registry and the guarded call ----------------------------------------------------------------------

Tool = Callable[[str], str]

DEFAULT_CORPUS = {
    "boiling point of water": "Water boils at 100 degrees Celsius at sea level.",
    "speed of light": "Light travels at 299792458 metres per second in a vacuum.",
    "days in a leap year": "A leap year has 366 days.",
}


def builtin_tool(name: str) -> Tool:
    """A fresh instance of the built-in tool `name` (calc | python | lookup)."""
    if name == "calc":
        return calculator
    if name == "python":
        return PythonTool()
    if name == "lookup":
        return Lookup(DEFAULT_CORPUS)
    raise ValueError(f"unknown built-in tool {name!r}; known: {sorted(BUILTIN_TOOLS)}")


BUILTIN_TOOLS = ("calc", "python", "lookup")

# each built-in's signature, for a chat template's tool declarations: (its one string parameter, description)
TOOL_SIGNATURES = {
    "calc": ("expression", "Evaluate an arithmetic expression (integers, + - * / // % **, parentheses)."),
    "python": ("code", "Run a Python program in a sandbox; returns what it prints."),
    "lookup": ("query", "Look a fact up in a local reference corpus."),
}


def tool_schema(name: str) -> dict:
    """The JSON schema (OpenAI/Hugging Face `tools=` style) declaring tool `name`: one string parameter."""
    param, description = TOOL_SIGNATURES.get(name, ("input", f"The tool {name}."))
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {param: {"type": "string"}}, "required": [param]}}}


@dataclass(frozen=True)
class ToolOutcome:
    """What one guarded call produced: the observation text, and the error kind ('' when it worked)."""

    text: str
    error: str = ""  # '' | tool_error | timeout


def call_tool(tool: Tool, argument: str, timeout: float) -> ToolOutcome:
    """Run `tool(argument)` in a daemon thread and wait at most `timeout` seconds.

    A tool still running at its limit is abandoned (its thread cannot be killed; it holds no lock the
    rollout needs) and the call reports 'timeout'; a tool that raises reports 'tool_error' with its
    message. Tools that must be killed for real (untrusted code) enforce their own limits, as the
    sandboxed `python` tool does."""
    box: dict[str, object] = {}

    def target():
        try:
            box["value"] = str(tool(argument))
        except ToolError as exc:
            box["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a tool's bug must not end the rollout
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=target, daemon=True, name="reasonloop-tool")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return ToolOutcome(f"error: the tool ran past its {timeout:g} s limit", "timeout")
    if "error" in box:
        return ToolOutcome(f"error: {box['error']}"[:MAX_OBSERVATION_CHARS], "tool_error")
    return ToolOutcome(str(box.get("value", ""))[:MAX_OBSERVATION_CHARS])
