"""Environments for multi-turn rollouts: `reset(example) -> observation`, `step(action) -> (observation,
reward, done)`.

An environment is any object with

- `stop`: the strings that end a policy turn (generation also stops at EOS and at the turn's token limit);
- `reset(example) -> str`: the first observation (for a task, usually the prompt);
- `step(action) -> (observation, reward, done)`: `action` is the text the policy wrote this turn; the
  observation is appended to the context (never trained on), `reward` is this turn's reward (summed with
  the others into the episode's return), `done` ends the episode;
- optionally `stats`: a dict of counters (tool calls, errors ...) that the engine sums into its metrics.

`ToolEnv` turns a set of tools into an environment: a turn that ends with a tool call is a call, whose
result is appended; a turn without a call is the final answer (done). The call's format is the env's
`format`: `TagFormat` (any tokenizer: `<tool name="NAME">ARG</tool>`, answered `<result>TEXT</result>`), or
`HermesFormat`, the tokenizer's own format where its chat template has one (Qwen/Hermes:
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, answered in the template's tool turn, with the
tools declared in the prompt through the template's `tools=`). Malformed calls, unknown tools, tool errors and timeouts come back as `<result>error: ...</result>`
and are counted by kind in `stats`; none of them ends the episode or raises. `GuessEnv` is a game with no
tools (guess a number, told higher/lower each turn): the API is not tied to tools.
"""

from __future__ import annotations

import json
import re
from typing import Protocol, runtime_checkable

from reasonloop.agents.tools import BUILTIN_TOOLS, TOOL_SIGNATURES, Tool, builtin_tool, call_tool, tool_schema
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


class TagFormat:
    """reasonloop's tool-call format, for any tokenizer: `<tool name="NAME">ARG</tool>`, answered
    `<result>TEXT</result>`."""

    open, close = "<tool", "</tool>"
    tool_specs = None  # nothing to declare in the prompt

    def parse(self, call: str) -> tuple[str, str]:
        """(tool name, argument) of a call (the text from `open` to the closing tag); ValueError if malformed."""
        match = CALL_RE.match(call)
        if match is None or "<tool" in match["arg"]:
            raise ValueError("malformed tool call")
        return match["name"], match["arg"]

    def observation(self, text: str) -> str:
        return observation(text)


class HermesFormat:
    """The tool-call format of chat templates in the Qwen/Hermes family: the policy writes
    `<tool_call>{"name": "calc", "arguments": {"expression": "37+28"}}</tool_call>` and the result comes back as
    the template's tool turn (for Qwen: `<|im_end|>` + a user turn `<tool_response>...</tool_response>` + a new
    assistant header), cut out of the template's own rendering (`tool_turn`). `tool_specs` are the JSON schemas
    the prompt declares (`apply_chat_template(..., tools=tool_specs)`)."""

    open, close = "<tool_call>", "</tool_call>"

    def __init__(self, tokenizer, names: list[str] | tuple[str, ...]):
        self.before, self.after = tool_turn(tokenizer)
        self.names = tuple(names)
        self.tool_specs = [tool_schema(n) for n in names]

    def parse(self, call: str) -> tuple[str, str]:
        body = json.loads(call[len(self.open): -len(self.close)].strip())  # JSONDecodeError is a ValueError
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ValueError("a tool call is a JSON object with a string 'name'")
        name, args = body["name"], body.get("arguments", body.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError:
                return name, args
        if not isinstance(args, dict):
            raise ValueError("'arguments' must be an object")
        param = TOOL_SIGNATURES.get(name, ("",))[0]
        if param in args:
            return name, str(args[param])
        if len(args) == 1:
            return name, str(next(iter(args.values())))
        raise ValueError(f"tool {name!r} takes one argument ({param or 'any name'}), got {sorted(args)}")

    def observation(self, text: str) -> str:
        return self.before + text + self.after


def tool_turn(tokenizer) -> tuple[str, str]:
    """(what comes between the assistant's call and the tool's answer, what follows the answer up to the next
    assistant turn), as the tokenizer's chat template renders a tool message after an assistant message."""
    action, result = "ACTION_7c1e", "RESULT_7c1e"
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": action},
                {"role": "tool", "content": result}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - templates raise anything (jinja's TemplateError, ValueError ...)
        raise ValueError(f"the chat template cannot render a tool message: {exc}") from exc
    i, j = text.find(action), text.find(result)
    if i < 0 or j < i:
        raise ValueError("the chat template does not render a tool message after the assistant's turn")
    return text[i + len(action): j], text[j + len(result):]


def has_tool_call_format(tokenizer) -> bool:
    """True when the tokenizer's chat template uses the Qwen/Hermes `<tool_call>` format."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = " ".join(map(str, template.values()))
    return bool(template) and "<tool_call>" in template


class ToolEnv:
    """Tools as an environment (see the module docstring).

    `tools`: name -> function `fn(argument) -> str`; `timeout`: seconds per call; `call_reward` and
    `error_reward`: per-turn rewards for a working call and for a failed one (0 by default: the task's
    reward on the final transcript does the teaching); `format`: how calls are written and answered
    (`TagFormat()` by default, `HermesFormat` for chat templates with a tool-call format)."""

    def __init__(self, tools: dict[str, Tool], timeout: float = 2.0, call_reward: float = 0.0,
                 error_reward: float = 0.0, format: TagFormat | HermesFormat | None = None):
        self.tools = dict(tools)
        self.timeout = timeout
        self.call_reward = call_reward
        self.error_reward = error_reward
        self.format = format if format is not None else TagFormat()
        self.stop = [self.format.close]
        self.stats = {"calls": 0, "errors": 0, **{k: 0 for k in ERROR_KINDS}}

    def reset(self, example: Example) -> str:
        return example.prompt

    def step(self, action: str) -> tuple[str, float, bool]:
        fmt = self.format
        start = action.rfind(fmt.open)
        if not action.endswith(fmt.close):
            if start >= 0 and fmt.close not in action[start:]:  # an unclosed call at the end of the answer
                self.stats["calls"] += 1
                self._count("malformed")
            return "", 0.0, True
        self.stats["calls"] += 1
        try:
            if start < 0:
                raise ValueError("no opening tag")
            name, argument = fmt.parse(action[start:])
        except ValueError:
            self._count("malformed")
            return fmt.observation("error: malformed tool call"), self.error_reward, False
        if name not in self.tools:
            self._count("unknown_tool")
            return fmt.observation(f"error: unknown tool {name!r}; tools: {', '.join(sorted(self.tools))}"), \
                self.error_reward, False
        outcome = call_tool(self.tools[name], argument, self.timeout)
        if outcome.error:
            self._count(outcome.error)
            return fmt.observation(outcome.text), self.error_reward, False
        return fmt.observation(outcome.text), self.call_reward, False

    def _count(self, kind: str) -> None:
        self.stats[kind] += 1
        self.stats["errors"] += 1


def tool_env_factory(names: list[str] | tuple[str, ...], timeout: float = 2.0, **kwargs):
    """A function making a fresh `ToolEnv` with the built-in tools `names` (one per episode); `kwargs` go to
    `ToolEnv` (rewards, `format`)."""
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
