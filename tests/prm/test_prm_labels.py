"""Monte-Carlo step labels (Math-Shepherd) on hand-built cases, with a scripted engine; step files."""

from __future__ import annotations

import json

import pytest
import torch

from reasonloop.data.io import DataError
from reasonloop.data.records import Example, RolloutBatch
from reasonloop.prm.labels import StepExample, mc_labels, read_step_file, step_examples
from reasonloop.rollout.engine import SamplingConfig
from reasonloop.tasks.arithmetic import ArithmeticTask

PROMPT = "Q: 2+3+4=?\n"
EX = Example(PROMPT, "9", {"id": "2+3+4"})
RIGHT = "<think>2+3=5;5+4=9</think><answer>9</answer>"
WRONG_FIRST = "<think>2+3=6;6+4=10</think><answer>10</answer>"


class ScriptedEngine:
    """Completions scripted per prompt text: `script[prompt]` lists the completions of samples 0, 1, ...
    (cycled). Each completion counts one token per character."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts, n, sampling, generator=None):
        self.calls.append((list(prompts), n))
        comps = [self.script[p][g % len(self.script[p])] for p in prompts for g in range(n)]
        T = max(1, max(len(c) for c in comps))
        mask = torch.tensor([[1] * len(c) + [0] * (T - len(c)) for c in comps])
        z = torch.zeros(len(comps), 1, dtype=torch.long)
        return RolloutBatch(z, z, torch.zeros_like(mask), mask, torch.zeros(mask.shape), ["stop"] * len(comps), comps, n)


def test_mc_labels_by_hand():
    """Two distinct solutions (+ a repeat). The right one's prefixes: after '2+3=5;' 3 of 4 rollouts
    succeed; after '5+4=9</think>' 4 of 4. The wrong one's: after '2+3=6;' 0 of 4 (hard label False),
    after '6+4=10</think>' 1 of 4 (the policy sometimes 'repairs' the answer: hard label True)."""
    task = ArithmeticTask()
    script = {
        PROMPT: [RIGHT, WRONG_FIRST, RIGHT],
        PROMPT + "<think>2+3=5;": ["5+4=9</think><answer>9</answer>"] * 3 + ["5+4=8</think><answer>8</answer>"],
        PROMPT + "<think>2+3=5;5+4=9</think>": ["<answer>9</answer>"],
        PROMPT + "<think>2+3=6;": ["6+4=10</think><answer>10</answer>"],
        PROMPT + "<think>2+3=6;6+4=10</think>": ["<answer>10</answer>"] * 3 + ["<answer>9</answer>"],
    }
    engine = ScriptedEngine(script)
    rows, stats = mc_labels(engine, [EX], task.is_correct, solutions_per_prompt=3, mc_rollouts=4,
                            sampling=SamplingConfig(), batch_prompts=64)
    assert [r.steps for r in rows] == [["<think>2+3=5;", "5+4=9</think>", "<answer>9</answer>"],
                                       ["<think>2+3=6;", "6+4=10</think>", "<answer>10</answer>"]]
    assert rows[0].values == [0.75, 1.0, 1.0] and rows[0].labels == [True, True, True] and rows[0].outcome is True
    assert rows[1].values == [0.0, 0.25, 0.0] and rows[1].labels == [False, True, False] and rows[1].outcome is False
    assert rows[0].targets("hard") == [1.0, 1.0, 1.0] and rows[1].targets("soft") == [0.0, 0.25, 0.0]
    # one call samples the solutions, ONE call rolls out all four prefixes (4 x K rows)
    assert engine.calls[1] == ([PROMPT + "<think>2+3=5;", PROMPT + "<think>2+3=5;5+4=9</think>",
                                PROMPT + "<think>2+3=6;", PROMPT + "<think>2+3=6;6+4=10</think>"], 4)
    assert (stats.solutions, stats.duplicates, stats.steps, stats.prefixes, stats.rollouts, stats.engine_calls) == \
        (2, 1, 6, 4, 16, 2)
    sampled = len(RIGHT) * 2 + len(WRONG_FIRST)
    rolled = sum(len(script[q][g % len(script[q])]) for q in list(script)[1:] for g in range(4))
    assert stats.generated_tokens == sampled + rolled


def test_shared_prefixes_are_rolled_out_once_and_batches_split():
    """Two solutions sharing their first step: that prefix is one query. rollout_batch=1 makes one engine
    call per prefix (and per prompt for the solutions)."""
    task = ArithmeticTask()
    other = "<think>2+3=5;5+4=10</think><answer>10</answer>"
    script = {PROMPT: [RIGHT, other], PROMPT + "<think>2+3=5;": ["5+4=9</think><answer>9</answer>"],
              PROMPT + "<think>2+3=5;5+4=9</think>": ["<answer>9</answer>"],
              PROMPT + "<think>2+3=5;5+4=10</think>": ["<answer>10</answer>"]}
    engine = ScriptedEngine(script)
    rows, stats = mc_labels(engine, [EX], task.is_correct, solutions_per_prompt=2, mc_rollouts=2, batch_prompts=1)
    assert stats.prefixes == 3 and stats.engine_calls == 1 + 3 and stats.rollouts == 6
    assert rows[1].values == [1.0, 0.0, 0.0] and rows[1].labels == [True, False, False]


def test_outcome_labels_need_no_rollouts():
    task = ArithmeticTask()
    engine = ScriptedEngine({PROMPT: [RIGHT, WRONG_FIRST]})
    rows, stats = mc_labels(engine, [EX], task.is_correct, solutions_per_prompt=2, outcome_only=True)
    assert [r.labels for r in rows] == [[True] * 3, [False] * 3]
    assert [r.values for r in rows] == [[1.0] * 3, [0.0] * 3]
    assert stats.rollouts == 0 and len(engine.calls) == 1


def test_a_truncated_solution_is_labelled_by_its_verdict_and_empty_ones_are_dropped():
    task = ArithmeticTask()
    script = {PROMPT: ["<think>2+3=5;5+", ""], PROMPT + "<think>2+3=5;": ["5+4=9</think><answer>9</answer>"]}
    rows, stats = mc_labels(ScriptedEngine(script), [EX], task.is_correct, solutions_per_prompt=2, mc_rollouts=2)
    assert len(rows) == 1 and rows[0].steps == ["<think>2+3=5;", "5+"]
    assert rows[0].values == [1.0, 0.0] and rows[0].labels == [True, False]


# -- step files ---------------------------------------------------------------------------------------------


def test_step_file_round_trip_and_counted_skips(tmp_path, caplog):
    good = StepExample(PROMPT, ["<think>2+3=5;", "5+4=9</think>"], [True, False], [0.5, 0.0], False)
    lines = [json.dumps(good.to_row()),
             "{not json",
             json.dumps({"prompt": 3, "completions": ["a"], "labels": [True]}),
             json.dumps({"prompt": "p", "completions": [], "labels": []}),
             json.dumps({"prompt": "p", "completions": ["a", 7], "labels": [True, True]}),
             json.dumps({"prompt": "p", "completions": ["a", "b"], "labels": [True]}),
             json.dumps({"prompt": "p", "completions": ["a"], "labels": ["yes"]}),
             json.dumps({"prompt": "p", "completions": ["a"], "labels": [True], "values": [1.5]}),
             json.dumps({"prompt": "p", "completions": ["a", "b"], "labels": [1, 0]}),
             "[1, 2]"]
    path = tmp_path / "steps.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        rows, skips = read_step_file(str(path))
    assert [(r.prompt, r.steps, r.labels, r.values, r.outcome) for r in rows] == [
        (PROMPT, good.steps, [True, False], [0.5, 0.0], False), ("p", ["a", "b"], [True, False], [1.0, 0.0], None)]
    assert skips == {"no string 'prompt'": 1, "'completions' not a non-empty list of strings": 2,
                     "'labels' not one bool per step": 2, "'values' not one number in [0, 1] per step": 1}
    log = caplog.text
    assert "skipped 6 of 8 rows" in log  # our checks
    assert "1 malformed JSON (first at line 2)" in log and "1 not a JSON object (first at line 10)" in log  # data.io's


def test_custom_columns_and_a_file_with_no_usable_row(tmp_path):
    rows, _ = step_examples([{"q": "p", "s": ["a\n", "b\n"], "ok": [True, True]}], "rows", prompt_field="q",
                            steps_field="s", labels_field="ok")
    assert rows[0].steps == ["a\n", "b\n"] and rows[0].labels == [True, True]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completions": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: no usable step rows \(1 'labels' not one bool per step\)"):
        read_step_file(str(path))


def test_given_solutions_are_labelled_like_samples_without_sampling():
    """Example 0 is sampled; example 1 brings its own (a correct and a corrupted trace): only example 0's
    prompt reaches the sampling call, and the given traces' prefixes are rolled out with the rest."""
    task = ArithmeticTask()
    other = Example("Q: 1+1=?\n", "2")
    script = {PROMPT: ["<think>2+3+4=9</think><answer>9</answer>"],
              PROMPT + "<think>2+3+4=9</think>": ["<answer>9</answer>"],
              "Q: 1+1=?\n<think>1+1=2</think>": ["<answer>2</answer>"],
              "Q: 1+1=?\n<think>1+1=3</think>": ["<answer>3</answer>", "<answer>2</answer>"]}
    engine = ScriptedEngine(script)
    given = [None, ["<think>1+1=2</think><answer>2</answer>", "<think>1+1=3</think><answer>3</answer>"]]
    rows, stats = mc_labels(engine, [EX, other], task.is_correct, solutions_per_prompt=1, mc_rollouts=2, given=given)
    assert engine.calls[0] == ([PROMPT], 1)
    assert [(r.prompt, r.values, r.labels) for r in rows] == [
        (PROMPT, [1.0, 1.0], [True, True]), ("Q: 1+1=?\n", [1.0, 1.0], [True, True]),
        ("Q: 1+1=?\n", [0.5, 0.0], [True, False])]
    assert stats.solutions == 3 and stats.prefixes == 3
    with pytest.raises(ValueError, match="2 examples but 1 given"):
        mc_labels(engine, [EX, other], task.is_correct, given=[None])
