"""The arithmetic task with a calculator: the same problems, verifier and rewards, solved with tool calls.

A tool-using solution hands the whole chain to the calculator and copies its result:

    <think><tool name="calc">37+28-15</tool><result>50</result></think><answer>50</answer>

`<tool name="calc">...</tool>` is the call the policy writes; `<result>...</result>` is the observation
the environment (`agents.ToolEnv` with the `calc` tool) appends. The transcript is still in the strict
`<think>...</think><answer>...</answer>` shape, so `ArithmeticTask.is_correct` grades it unchanged,
with or without tools. Only the length limit is looser (a call and its result cost ~40 characters).

`pretraining_records(p_tool=...)` mixes a small share of such solutions into the ordinary corpus of
careful and lazy traces: the corpus `reasonloop pretrain_tool` continues tiny-arith on to build the
`tiny-tool` asset (docs/agents.md), whose base calls the calculator only sometimes.
"""

from __future__ import annotations

import random

from reasonloop.tasks.arithmetic import LEVELS, ArithmeticTask, Problem, format_prompt, parse_levels

TOOL_NAME = "calc"


def tool_call(expression: str, name: str = TOOL_NAME) -> str:
    """The text of one tool call in reasonloop's tag format."""
    return f'<tool name="{name}">{expression}</tool>'


def tool_completion(problem: Problem) -> str:
    """A solution that hands the whole chain to the calculator, with the result the calculator returns."""
    return (f"<think>{tool_call(problem.text)}<result>{problem.answer}</result></think>"
            f"<answer>{problem.answer}</answer>")


class ToolArithTask(ArithmeticTask):
    """`ArithmeticTask` played with the `calc` tool (see the module docstring)."""

    name = "tool_arith"
    embedded_model = "tiny-tool"
    tools = (TOOL_NAME,)  # the tools this task's environment offers (agents.TOOLS names)

    def __init__(self, levels: tuple[int, ...] = tuple(LEVELS), max_completion_chars: int = 240):
        super().__init__(levels, max_completion_chars)

    def pretraining_records(self, n: int, seed: int = 0, p_careful: float = 0.4, p_tool: float = 0.1) -> list[dict]:
        """The arithmetic corpus (careful or lazy traces) with a share `p_tool` of calculator solutions."""
        rng = random.Random(f"{seed}:tool")
        records = super().pretraining_records(n, seed, p_careful)
        problems = self.problems("train", n, seed, distinct=False)
        for i, p in enumerate(problems):
            if rng.random() < p_tool:
                records[i] = {"prompt": format_prompt(p), "completion": tool_completion(p)}
        return records


def make_task(arg: str | None, data_dir: str | None) -> ToolArithTask:
    return ToolArithTask(parse_levels(arg) if arg else tuple(LEVELS))
