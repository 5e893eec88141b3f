"""Environments for multi-turn rollouts: `reset(example) -> observation`, `step(action) -> (observation,
reward, done)`.

An environment is any object with

- `stop`: the strings that end a policy turn (generation also stops at EOS and at the turn's token limit);
- `reset(example) -> str`: the first observation (for a task, usually the prompt);
- `step(action) -> (observation, reward, done)`: `action` is the text the policy wrote this turn; the
  observation is appended to the context (never trained on), `reward` is this turn's reward (summed with
  the others into the episode's return), `done` ends the episode;
- optionally `stats`: a dict of counters (tool calls, errors ...) that the engine sums into its metrics.

`ToolEnv` turns a set of tools into an environment: a turn that ends with `<tool name="NAME">ARG</tool>`
is a call, whose result comes back as `<result>TEXT</result>`; a turn without a call is the final answer
(done). Malformed calls, unknown tools, tool errors and timeouts come back as `<result>error: ...</result>`
and are counted by kind in `stats`; none of them ends the episode or raises. `GuessEnv` is a game with no
tools (guess a number, told higher/lower each turn): the API is not tied to tools.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from reasonloop.agents.tools import BUILTIN_TOOLS, Tool, builtin_tool, call_tool
from reasonloop.data.records import Example

CALL_RE = re.compile(r'<tool name="(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)">(?P<arg>.*)</tool>$', re.S)
ERROR_KINDS = ("malformed", "unknown_tool", "tool_error", "timeout")


@runtime_checkable
class Environment(Protocol):
    stop: list[str]

    def reset(self, example: Example) -> str: ...

    def step(self, action: str) -> tuple[str, float, bool]: ...


def observation(text: str) -> str:
    """How a tool's answer is shown to the policy (the closing tag inside the text is neutralised)."""
    return f"<result>{text.replace('</result>', '</ result>')}</result>"


class ToolEnv:
    """Tools as an environment (see the module docstring).

    `tools`: name -> function `fn(argument) -> str`; `timeout`: seconds per call; `call_reward` and
    `error_reward`: per-turn rewards for a working call and for a failed one (0 by default: the task's
    reward on the final transcript does the teaching)."""

    stop = ["</tool>"]

    def __init__(self, tools: dict[str, Tool], timeout: float = 2.0, call_reward: float = 0.0,
                 error_reward: float = 0.0):
        self.tools = dict(tools)
        self.timeout = timeout
        self.call_reward = call_reward
        self.error_reward = error_reward
        self.stats = {"calls": 0, "errors": 0, **{k: 0 for k in ERROR_KINDS}}

    def reset(self, example: Example) -> str:
        return example.prompt

    def step(self, action: str) -> tuple[str, float, bool]:
        start = action.rfind("<tool")
        if not action.endswith("</tool>"):
            if start >= 0 and "</tool>" not in action[start:]:  # an unclosed call at the end of the answer
                self.stats["calls"] += 1
                self._count("malformed")
            return "", 0.0, True
        self.stats["calls"] += 1
        match = CALL_RE.match(action[start:]) if start >= 0 else None
        if match is None or "<tool" in match["arg"]:
            self._count("malformed")
            return observation("error: malformed tool call"), \
                self.error_reward, False
        name, argument = match["name"], match["arg"]
        if name not in self.tools:
            self._count("unknown_tool")
            return observation(f"error: unknown tool {name!r}; tools: {', '.join(sorted(self.tools))}"), \
                self.error_reward, False
        outcome = call_tool(self.tools[name], argument, self.timeout)
        if outcome.error:
            self._count(outcome.error)
            return observation(outcome.text), self.error_reward, False
        return observation(outcome.text), self.call_reward, False

    def _count(self, kind: str) -> None:
        self.stats[kind] += 1
        self.stats["errors"] += 1


def tool_env_factory(names: list[str] | tuple[str, ...], timeout: float = 2.0, **kwargs):
    """A function making a fresh `ToolEnv` with the built-in tools `names` (one per episode)."""
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(f"unknown tools {unknown}; built-in: {list(BUILTIN_TOOLS)}")
    shared = {n: builtin_tool(n) for n in names}  # stateless tools: one instance serves every episode
    return lambda: ToolEnv(shared, timeout, **kwargs)


GUESS_RE = re.compile(r"<guess>\s*(-?\d+)\s*</guess>$")


class GuessEnv:
    """Guess a secret integer in [low, high] (the example's answer); each guess is told 'higher', 'lower'
    or 'correct'. Reward: 1 on the correct guess, `step_reward` (default -0.1) per other turn; a turn
    without a well-formed `<guess>N</guess>` is told so and counted as 'malformed'."""

    stop = ["</guess>"]

    def __init__(self, low: int = 1, high: int = 50, step_reward: float = -0.1):
        self.low, self.high, self.step_reward = low, high, step_reward
        self.secret: int | None = None
        self.stats = {"guesses": 0, "malformed": 0, "errors": 0}

    def reset(self, example: Example) -> str:
        self.secret = int(example.answer)
        return example.prompt or f"Guess my number between {self.low} and {self.high}; write <guess>N</guess>.\n"

    def step(self, action: str) -> tuple[str, float, bool]:
        if self.secret is None:
            raise RuntimeError("GuessEnv.step before reset")
        match = GUESS_RE.search(action.strip())
        if match is None:
            self.stats["malformed"] += 1
            self.stats["errors"] += 1
            return "<feedback>write <guess>N</guess></feedback>", self.step_reward, False
        self.stats["guesses"] += 1
        guess = int(match[1])
        if guess == self.secret:
            return "<feedback>correct</feedback>", 1.0, True
        hint = "higher" if self.secret > guess else "lower"
        return f"<feedback>{hint}</feedback>", self.step_reward, False


def run_scripted(env, example: Example, actions: list[str], max_turns: int = 16) -> dict:
    """Drive `env` with scripted policy turns (no model): the transcript, observations, rewards and whether
    it ended. The reference for what the multi-turn engine must produce for the same actions."""
    first = env.reset(example)
    transcript, observations, rewards, done = "", [], [], False
    for action in actions[:max_turns]:
        obs, reward, done = env.step(action)
        transcript += action + ("" if done else obs)
        observations.append(obs)
        rewards.append(reward)
        if done:
            break
    return {"prompt": first, "transcript": transcript, "observations": observations, "rewards": rewards,
            "done": done}
