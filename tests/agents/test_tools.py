"""Tools and environments: the AST calculator, sandboxed python, lookup, and every failure as an error observation."""

import time

import pytest

from reasonloop.agents import GuessEnv, Lookup, ToolEnv, ToolError, calculator, call_tool, run_scripted
from reasonloop.agents.envs import tool_env_factory
from reasonloop.data.records import Example


@pytest.mark.parametrize("expr, want", [
    ("37+28-15", "50"), ("2*(3+4)", "14"), ("-5+2", "-3"), ("7/2", "3.5"), ("8/2", "4"), ("7//2", "3"),
    ("2**10", "1024"), (" 1 + 1 ", "2"), ("10%4", "2"), ("1.5*2", "3"),
])
def test_calculator_values(expr, want):
    assert calculator(expr) == want


@pytest.mark.parametrize("expr, message", [
    ("__import__('os').system('true')", "unsupported syntax: Call"),
    ("x+1", "unsupported syntax: Name"),
    ("1/0", "division by zero"),
    ("2**100", "exponent 100 is larger than 64"),
    ("9**64*9**64", "result too large"),
    ("1+", "not an arithmetic expression: '1+'"),
    ("", "empty expression"),
    ("'a'*3", "unsupported syntax: Constant"),
    ("[1][0]", "unsupported syntax: Subscript"),
    ("1" * 201, "expression longer than 200 characters"),
])
def test_calculator_refuses(expr, message):
    with pytest.raises(ToolError) as err:
        calculator(expr)
    assert str(err.value) == message


# every malformed call in this corpus must come back as the malformed-call observation, counted
MALFORMED = [
    "<tool>1+1</tool>",
    "<tool name=calc>1+1</tool>",
    "<tool name='calc'>1+1</tool>",
    '<tool name="">1+1</tool>',
    '<tool name="calc"1+1</tool>',
    '<tool name="calc>1+1</tool>',
    '<toolname="calc">1+1</tool>',
    "</tool>",
    'text then <tool  name="calc">2</tool>',
    '<tool name="ca lc">2</tool>',
]


@pytest.mark.parametrize("action", MALFORMED)
def test_malformed_calls_become_error_observations(action):
    env = ToolEnv({"calc": calculator})
    obs, reward, done = env.step(action)
    assert obs == '<result>error: malformed tool call</result>'
    assert (reward, done) == (0.0, False)
    assert env.stats == {"calls": 1, "errors": 1, "malformed": 1, "unknown_tool": 0, "tool_error": 0, "timeout": 0}


def test_call_unknown_tool_and_tool_error_are_counted():
    env = ToolEnv({"calc": calculator}, error_reward=-0.5)
    assert env.step('<think><tool name="calc">6*7</tool>') == ("<result>42</result>", 0.0, False)
    assert env.step('<tool name="search">x</tool>') == (
        "<result>error: unknown tool 'search'; tools: calc</result>", -0.5, False)
    assert env.step('<tool name="calc">1/0</tool>') == ("<result>error: division by zero</result>", -0.5, False)
    assert env.step("</think><answer>42</answer>") == ("", 0.0, True)
    assert env.stats == {"calls": 3, "errors": 2, "malformed": 0, "unknown_tool": 1, "tool_error": 1, "timeout": 0}


def test_unclosed_call_at_the_end_is_malformed_and_final():
    env = ToolEnv({"calc": calculator})
    assert env.step('<think><tool name="calc">1+') == ("", 0.0, True)
    assert env.stats["malformed"] == 1 and env.stats["calls"] == 1  # an attempted call, counted as one


def test_a_crashing_tool_is_a_tool_error():
    def broken(arg):
        raise KeyError("boom")

    env = ToolEnv({"broken": broken})
    assert env.step('<tool name="broken">x</tool>') == ("<result>error: KeyError: 'boom'</result>", 0.0, False)
    assert env.stats["tool_error"] == 1


def test_a_hanging_tool_is_cut_off_at_its_time_limit():
    def hang(arg):
        time.sleep(30)
        return "never"

    env = ToolEnv({"hang": hang}, timeout=0.2)
    start = time.perf_counter()
    obs, reward, done = env.step('<tool name="hang">x</tool>')
    elapsed = time.perf_counter() - start
    assert obs == "<result>error: the tool ran past its 0.2 s limit</result>" and not done
    assert 0.2 <= elapsed < 5.0  # cut at 0.2 s, not the tool's 30 (slack for a loaded machine)
    assert env.stats["timeout"] == 1 and env.stats["errors"] == 1


def test_call_tool_truncates_long_output():
    out = call_tool(lambda a: "x" * 1000, "", 1.0)
    assert out.text == "x" * 200 and out.error == ""


def test_python_tool_runs_in_the_sandbox(monkeypatch):
    from reasonloop.agents import PythonTool
    from reasonloop.sandbox import NONE, isolation_level

    if isolation_level() == NONE:
        pytest.skip("this machine cannot even set rlimits; the sandbox itself is tested in tests/sandbox")
    monkeypatch.setenv("REASONLOOP_ALLOW_UNISOLATED", "1")  # where bubblewrap cannot run (containers), rlimits
    env = ToolEnv({"python": PythonTool(wall_time_s=3.0)}, timeout=30.0)  # the sandbox's own 3 s limit kills
    assert env.step('<tool name="python">print(6*7)</tool>') == ("<result>42</result>", 0.0, False)
    obs, _, _ = env.step('<tool name="python">import os; os.system("ls /root")\nraise ValueError("no")</tool>')
    assert obs == "<result>error: runtime_error: ValueError: no</result>"
    obs, _, _ = env.step('<tool name="python">while True: pass</tool>')
    assert obs == "<result>error: timeout</result>"
    assert env.stats["tool_error"] == 2


def test_lookup_finds_the_best_overlap(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"key": "capital of France", "text": "Paris"}\n{"key": "capital of Italy", "text": "Rome"}\n')
    look = Lookup(corpus)
    assert look("what is the capital of italy") == "Rome"
    with pytest.raises(ToolError, match="nothing found for 'zebra'"):
        look("zebra")
    env = ToolEnv({"lookup": look})
    assert env.step('<tool name="lookup">France</tool>') == ("<result>Paris</result>", 0.0, False)


def test_tool_env_factory_rejects_unknown_builtins():
    with pytest.raises(ValueError, match="unknown tools \\['shell'\\]"):
        tool_env_factory(["calc", "shell"])
    env = tool_env_factory(["calc", "lookup"])()
    assert sorted(env.tools) == ["calc", "lookup"]


def test_scripted_policy_plays_the_guessing_game_by_bisection():
    env = GuessEnv(1, 50)
    ex = Example("", "37")
    transcript = run_scripted(env, ex, ["<guess>25</guess>", "<guess>38</guess>", "<guess>31</guess>", "guess 34",
                                        "<guess>34</guess>", "<guess>37</guess>"])
    assert transcript["observations"] == ["<feedback>higher</feedback>", "<feedback>lower</feedback>",
                                          "<feedback>higher</feedback>", "<feedback>write <guess>N</guess></feedback>",
                                          "<feedback>higher</feedback>", "<feedback>correct</feedback>"]
    assert transcript["rewards"] == [-0.1] * 5 + [1.0]
    assert transcript["done"] and env.stats == {"guesses": 5, "malformed": 1, "errors": 1}
    assert transcript["prompt"] == "Guess my number between 1 and 50; write <guess>N</guess>.\n"
