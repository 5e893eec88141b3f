"""Code tasks and rewards: loaders from fixture JSONL, deterministic disjoint splits, verdicts."""

from __future__ import annotations

import json

import pytest

from reasonloop.data.tasks.code import CodeArithTask, make_humaneval, make_mbpp
from reasonloop.rewards.code import extract_code, outputs_match
from reasonloop.sandbox import NAMESPACES, isolation_level

needs_sandbox = pytest.mark.skipif(isolation_level() != NAMESPACES, reason="needs bubblewrap namespaces")


def test_extract_code_prefers_answer_then_last_fence():
    assert extract_code("<answer>```python\nx = 1\n```</answer>") == "x = 1"
    assert extract_code("a\n```python\nold\n```\n```py\nnew\n```") == "new"
    assert extract_code("```python\nunclosed = 1") == "unclosed = 1"
    assert extract_code("print(1)") == "print(1)"


def test_outputs_match_ignores_trailing_whitespace_only():
    assert outputs_match("1 2 \n3\n\n", "1 2\n3")
    assert not outputs_match("1  2", "1 2")


def test_code_arith_is_deterministic_and_splits_are_disjoint():
    task = CodeArithTask(levels=(3, 4))
    train, test = task.examples("train", 40, seed=1), task.examples("test", 10, seed=1)
    assert [e.id for e in train] == [e.id for e in CodeArithTask(levels=(3, 4)).examples("train", 40, seed=1)]
    assert not {e.id for e in train} & {e.id for e in test}
    assert train[0].prompt.startswith("Q: code f(") and train[0].answer.startswith("<answer>def f(")


@needs_sandbox
def test_code_arith_reference_answers_are_correct_and_wrong_ones_are_not():
    task = CodeArithTask()
    examples = task.examples("train", 4, seed=0)
    assert all(task.is_correct(e.answer, e) for e in examples)
    assert not task.is_correct("<answer>def f(a,b):return 0</answer>", examples[0])


def _write_mbpp(path):
    rows = [{"task_id": 11, "text": "Add two numbers.", "code": "def add(a, b):\n    return a + b",
             "test_list": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"], "test_setup_code": ""},
            {"task_id": 601, "text": "Square a number.", "code": "def sq(x):\n    return x * x",
             "test_list": ["assert sq(3) == 9"], "test_setup_code": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_mbpp_single_file_uses_paper_id_ranges(tmp_path):
    _write_mbpp(tmp_path / "mbpp.jsonl")
    task = make_mbpp(None, str(tmp_path))
    assert [e.id for e in task.examples("test", 0)] == ["mbpp/11"]
    assert [e.id for e in task.examples("train", 0)] == ["mbpp/601"]
    assert "assert add(1, 2) == 3" in task.examples("test", 0)[0].prompt


@needs_sandbox
def test_mbpp_verdicts(tmp_path):
    _write_mbpp(tmp_path / "mbpp.jsonl")
    task = make_mbpp(None, str(tmp_path / "mbpp.jsonl"))
    ex = task.examples("test", 1)[0]
    assert task.is_correct(f"```python\n{ex.answer}\n```", ex)
    assert not task.is_correct("def add(a, b):\n    return a - b", ex)
    rewards = task.rewards()[0].fn(prompts=[ex.prompt] * 2, completions=[ex.answer, "while True: pass"],
                                   tests=[ex.meta["tests"]] * 2)
    assert rewards == [1.0, 0.0]


@needs_sandbox
def test_humaneval_accepts_body_continuation_and_full_function(tmp_path):
    row = {"task_id": "HumanEval/0", "entry_point": "inc",
           "prompt": "from typing import List\n\ndef inc(xs: List[int]) -> List[int]:\n    \"\"\"Add one.\"\"\"\n",
           "canonical_solution": "    return [x + 1 for x in xs]\n",
           "test": "def check(candidate):\n    assert candidate([1, 2]) == [2, 3]\n"}
    (tmp_path / "he.jsonl").write_text(json.dumps(row) + "\n")
    task = make_humaneval(None, str(tmp_path))
    ex = task.examples("test", 0)[0]
    assert task.is_correct(ex.answer, ex)
    assert task.is_correct("```python\ndef inc(xs):\n    return [x + 1 for x in xs]\n```", ex)
    assert not task.is_correct("    return xs\n", ex)
    with pytest.raises(ValueError, match="only a 'test' split"):
        task.examples("train", 1)


def test_code_arith_pool_larger_than_a_level_returns_what_exists_and_has_sft_records():
    from reasonloop.data.tasks.code import CodeArithTask

    task = CodeArithTask()
    pool = task.examples("train", 5000)
    assert 1000 < len(pool) <= 5000 and len({e.id for e in pool}) == len(pool)
    records = task.sft_records("train", 3)
    assert records[0]["completion"].startswith("<answer>def f(") and records[0]["prompt"].startswith("Q: code f(")
