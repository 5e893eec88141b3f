"""Environments and tools for multi-turn RL (docs/agents.md): the `reset`/`step` API, `ToolEnv` with the
built-in calculator, sandboxed python and corpus lookup, and `GuessEnv`, a game with no tools."""

from reasonloop.agents.envs import Environment, GuessEnv, ToolEnv, observation, run_scripted, tool_env_factory
from reasonloop.agents.tools import BUILTIN_TOOLS, Lookup, PythonTool, ToolError, calculator, call_tool

__all__ = ["Environment", "ToolEnv", "GuessEnv", "observation", "run_scripted", "tool_env_factory", "BUILTIN_TOOLS",
           "Lookup", "PythonTool", "ToolError", "calculator", "call_tool"]
