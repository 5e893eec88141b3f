"""The arithmetic task with a calculator: the same problems, verifier and rewards, solved with tool calls.

A tool-using solution hands the whole chain to the calculator and copies its result:

    <think><tool name="calc">37+28-15</tool><result>50</result></think><answer>50</answer>

`<tool name="calc">...</tool>` is the call the policy writes; `<result>...</result>` is the observation
the environment (`agents.ToolEnv` with the `calc` tool) appends. The transcript is still in the strict
`<think>...</think><answer>...</answer>` shape, so `ArithmeticTask.is_correct` grades it unchanged,
with or without tools. Only the length limit is looser (a call and its result cost ~40 characters).

`pretraining_records(p_tool=..., p_tool_hard=...)` mixes a share of such solutions into the ordinary corpus
of careful and lazy traces (`p_tool_hard` on the levels in-head arithmetic fails, `HARD_LEVELS`): the corpus
`reasonloop pretrain_tool` continues tiny-arith on to build the `tiny-tool` asset (docs/agents.md), whose
base calls the calculator only sometimes. `segments(completion)` cuts a completion into the policy's text
and the environment's observations (`<result>...</result>`), so pretraining can leave the observations
out of the loss as RL does: the model learns to read the calculator's result, not to predict it.
"""

from __future__ import annotations

import random
import re

from reasonloop.tasks.arithmetic import LEVELS, ArithmeticTask, Problem, format_prompt, parse_levels

TOOL_NAME = "calc"
HARD_LEVELS = (4, 5)  # where in-head arithmetic fails (docs/agents.md): `p_tool_hard` applies here
OBSERVATION_RE = re.compile(r"<result>.*?</result>", re.S)


def segments(completion: str) -> list[tuple[str, bool]]:
    """`completion` cut into (text, is_observation) pieces, in order, empty pieces dropped; an observation is
    `<result>...</result>`, the text the environment appends after a call (`agents.envs`)."""
    out, at = [], 0
    for m in OBSERVATION_RE.finditer(completion):
        if m.start() > at:
            out.append((completion[at:m.start()], False))
        out.append((m.group(0), True))
        at = m.end()
    if at < len(completion):
        out.append((completion[at:], False))
    return out


def tool_call(expression: str, name: str = TOOL_NAME) -> str:
    """The text of one tool call in reasonloop's tag format."""
    return f'<tool name="{name}">{expression}</tool>'


def tool_completion(problem: Problem, result: int | None = None) -> str:
    """A solution that hands the whole chain to the calculator and answers with its result: the value the
    calculator returns, or `result` (a counterfactual observation: the answer still copies it)."""
    value = problem.answer if result is None else result
    return (f"<think>{tool_call(problem.text)}<result>{value}</result></think>"
            f"<answer>{value}</answer>")


class ToolArithTask(ArithmeticTask):
    """`ArithmeticTask` played with the `calc` tool (see the module docstring)."""

    name = "tool_arith"
    embedded_model = "tiny-tool"
    tools = (TOOL_NAME,)  # the tools this task's environment offers (agents.TOOLS names)

    def __init__(self, levels: tuple[int, ...] = tuple(LEVELS), max_completion_chars: int = 240):
        super().__init__(levels, max_completion_chars)

    def pretraining_records(self, n: int, seed: int = 0, p_careful: float = 0.4, p_tool: float = 0.1,
                            p_tool_hard: float | None = None, p_counterfactual: float = 0.0) -> list[dict]:
        """The arithmetic corpus (careful or lazy traces) with a share `p_tool` of calculator solutions on
        levels 1-3 and `p_tool_hard` (None: `p_tool`) on `HARD_LEVELS`. The same draws decide either way,
        so `p_tool_hard=None` is the corpus of the first tiny-tool builds. A share `p_counterfactual` of the
        calculator solutions shows another result (the true value moved by 1-20, never below 0) and answers
        with it: the answer is the tool's result whatever it says, so only copying it predicts the answer."""
        rng = random.Random(f"{seed}:tool")
        planted = random.Random(f"{seed}:counterfactual")
        records = super().pretraining_records(n, seed, p_careful)
        problems = self.problems("train", n, seed, distinct=False)
        for i, p in enumerate(problems):
            share = p_tool if p_tool_hard is None or p.level not in HARD_LEVELS else p_tool_hard
            if rng.random() < share:
                result = None
                if p_counterfactual and planted.random() < p_counterfactual:
                    result = p.answer + planted.choice([d for d in range(-20, 21) if d and p.answer + d >= 0])
                records[i] = {"prompt": format_prompt(p), "completion": tool_completion(p, result)}
        return records


def make_task(arg: str | None, data_dir: str | None) -> ToolArithTask:
    return ToolArithTask(parse_levels(arg) if arg else tuple(LEVELS))
