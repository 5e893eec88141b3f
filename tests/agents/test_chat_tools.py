"""The tokenizer's own tool-call format: a Qwen/Hermes-style chat template (built here, no downloads) makes the
policy write `<tool_call>{json}</tool_call>` and hears back in the template's tool turn."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasonloop.agents.envs import HermesFormat, TagFormat, ToolEnv, has_tool_call_format, tool_turn
from reasonloop.agents.tools import calculator
from reasonloop.config import ConfigError
from reasonloop.data.records import Example
from reasonloop.models.loading import render_prompt
from reasonloop.models.tiny import build_tokenizer
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.rollout.multiturn import AgentConfig, build_agent_engine, tool_format

from test_multiturn import Script

# a chat template in the shape of Qwen2.5's (ChatML; tools declared in a system turn; tool results in a user
# turn wrapped in <tool_response>), small enough to read
QWEN_LIKE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\nYou may call functions. Signatures within <tools></tools>:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\nFor each call, return <tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
BEFORE = "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
AFTER = "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def chat_tok():
    tok = build_tokenizer()
    tok.chat_template = QWEN_LIKE
    return tok


def call(obj) -> str:
    return "<tool_call>\n" + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n</tool_call>"


def test_the_tool_turn_is_cut_out_of_the_template(chat_tok):
    assert tool_turn(chat_tok) == (BEFORE, AFTER)
    assert has_tool_call_format(chat_tok) and not has_tool_call_format(build_tokenizer())
    fmt = HermesFormat(chat_tok, ["calc"])
    assert fmt.observation("50") == BEFORE + "50" + AFTER
    prompt = render_prompt(chat_tok, "Q: 37+28-15=?\n", tools=fmt.tool_specs)
    assert prompt.startswith("<|im_start|>system\nYou may call functions.")
    assert json.dumps(fmt.tool_specs[0]) in prompt and '"name": "calc"' in prompt and '"expression"' in prompt
    assert prompt.endswith("<|im_start|>user\nQ: 37+28-15=?\n<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("text, parsed", [
    (call({"name": "calc", "arguments": {"expression": "37+28-15"}}), ("calc", "37+28-15")),
    (call({"name": "calc", "arguments": {"x": "4*5"}}), ("calc", "4*5")),  # one argument, any name
    (call({"name": "calc", "arguments": "{\"expression\": \"2+2\"}"}), ("calc", "2+2")),  # arguments as a string
    (call({"name": "calc", "arguments": "2+2"}), ("calc", "2+2")),
    (call({"name": "calc", "parameters": {"expression": "1"}}), ("calc", "1")),
    ('<tool_call>{"name": "lookup", "arguments": {"query": "light"}}</tool_call>', ("lookup", "light")),
])
def test_hermes_calls_parse(chat_tok, text, parsed):
    assert HermesFormat(chat_tok, ["calc", "lookup"]).parse(text) == parsed


@pytest.mark.parametrize("text", [
    call("{name: calc}"),  # not JSON
    call('["calc", "1+1"]'),  # not an object
    call({"arguments": {"expression": "1"}}),  # no name
    call({"name": 3, "arguments": {}}),
    call({"name": "calc", "arguments": {"a": "1", "b": "2"}}),  # two arguments for a one-argument tool
    call({"name": "calc", "arguments": 7}),
])
def test_malformed_hermes_calls_raise(chat_tok, text):
    with pytest.raises(ValueError):
        HermesFormat(chat_tok, ["calc"]).parse(text)


def test_tool_env_in_the_chat_format(chat_tok):
    env = ToolEnv({"calc": calculator}, format=HermesFormat(chat_tok, ["calc"]))
    assert env.stop == ["</tool_call>"]
    assert env.step("<think>" + call({"name": "calc", "arguments": {"expression": "37+28-15"}})) == \
        (BEFORE + "50" + AFTER, 0.0, False)
    assert env.step(call({"name": "python", "arguments": {"code": "1"}})) == \
        (BEFORE + "error: unknown tool 'python'; tools: calc" + AFTER, 0.0, False)
    assert env.step(call("not json")) == (BEFORE + "error: malformed tool call" + AFTER, 0.0, False)
    assert env.step(call({"name": "calc", "arguments": {"expression": "1/0"}}))[0] == \
        BEFORE + "error: division by zero" + AFTER
    assert env.step("</think><answer>50</answer>") == ("", 0.0, True)
    assert env.stats == {"calls": 4, "errors": 3, "malformed": 1, "unknown_tool": 1, "tool_error": 1, "timeout": 0}
    unclosed = ToolEnv({"calc": calculator}, format=HermesFormat(chat_tok, ["calc"]))
    assert unclosed.step('<tool_call>{"name": "calc"') == ("", 0.0, True) and unclosed.stats["malformed"] == 1


def test_the_format_is_chosen_from_the_tokenizer(chat_tok):
    plain = build_tokenizer()
    assert isinstance(tool_format(AgentConfig(env="tools"), plain), TagFormat)
    assert isinstance(tool_format(AgentConfig(env="tools"), chat_tok), HermesFormat)
    assert isinstance(tool_format(AgentConfig(env="tools"), chat_tok, chat_template=False), TagFormat)
    assert isinstance(tool_format(AgentConfig(env="tools", tool_format="tags"), chat_tok), TagFormat)
    with pytest.raises(ConfigError, match="agent.tool_format=chat needs a tokenizer with a chat template"):
        tool_format(AgentConfig(env="tools", tool_format="chat"), plain)
    no_tool_role = build_tokenizer()
    no_tool_role.chat_template = ("{%- for m in messages %}{%- if m.role == 'tool' %}{{ raise_exception('no tools') }}"
                                  "{%- endif %}{{ m.content }}{%- endfor %}")
    with pytest.raises(ConfigError, match="agent.tool_format=chat: the chat template cannot render a tool message"):
        tool_format(AgentConfig(env="tools", tool_format="chat"), no_tool_role)
    with pytest.raises(ConfigError, match="agent.tool_format='json': auto, tags or chat"):
        AgentConfig(tool_format="json")


def test_a_scripted_episode_in_the_chat_format(chat_tok, nano_model_dir, tmp_path):
    """The whole path on a saved model directory whose tokenizer carries the template: the prompt declares the
    tools, the call is answered in the template's tool turn, and the tool turn is masked out of the loss."""
    chat_tok.save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(nano_model_dir)
    engine = build_agent_engine(AgentConfig(env="tools", max_tokens=250), model, tok)
    assert engine.tool_specs[0]["function"]["name"] == "calc"
    assert engine.budget.max_obs_tokens == 32 + len(BEFORE + AFTER)  # char-level: the frame comes on top
    first = "<think>" + call({"name": "calc", "arguments": {"expression": "37+28-15"}})
    engine.choose = Script(tok, {"Q: 37+28-15=?\n": [first, "</think><answer>50</answer>"]})
    render = lambda p: render_prompt(tok, p, tools=engine.tool_specs)  # noqa: E731
    batch = engine.episodes([Example("Q: 37+28-15=?\n", "50")], 1, SamplingConfig(max_new_tokens=100), render=render)
    obs = BEFORE + "50" + AFTER
    assert batch.completions == [first + obs + "</think><answer>50</answer>"]
    assert "<tools>" in tok.decode(batch.prompt_ids[0][batch.prompt_mask[0].bool()])
    n_first, n_obs = (len(tok(t, add_special_tokens=False)["input_ids"]) for t in (first, obs))
    policy = batch.policy_mask[0].tolist()
    assert policy[:n_first] == [1] * n_first and policy[n_first : n_first + n_obs] == [0] * n_obs
    assert policy[n_first + n_obs :] == [1] * (len(policy) - n_first - n_obs)
    assert engine.metrics()["agent/tool_calls_per_episode"] == 1.0
    assert torch.equal(batch.turn_rewards.nonzero(), torch.zeros(0, 2, dtype=torch.long))  # no rewards here
