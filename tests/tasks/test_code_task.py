"""Code tasks and rewards: loaders from fixture JSONL, deterministic disjoint splits, verdicts."""

from __future__ import annotations

import json
import random

import pytest

from reasonloop.tasks.code import CodeArithTask, make_humaneval, make_mbpp
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
    from reasonloop.tasks.code import CodeArithTask

    task = CodeArithTask()
    pool = task.examples("train", 5000)
    assert 1000 < len(pool) <= 5000 and len({e.id for e in pool}) == len(pool)
    records = task.sft_records("train", 3)
    assert records[0]["completion"].startswith("<answer>def f(") and records[0]["prompt"].startswith("Q: code f(")


def test_code_arith_prompts_use_maths_notation():
    from reasonloop.tasks.code import maths_notation, signed

    assert maths_notation("3*a*b-c*7+2") == "3ab-c*7+2"
    assert signed([4, -7, 3]) == "+4-7+3"
    for ex in CodeArithTask().examples("test", 40):
        formula = ex.prompt.split("=", 1)[1].strip()
        assert "*" not in formula and maths_notation(ex.meta["id"]) == formula


@needs_sandbox
def test_code_arith_corpus_mixes_careful_and_lazy_programs_that_are_all_correct():
    task = CodeArithTask()
    records = task.pretraining_records(24, seed=3, p_careful=0.5)
    examples = [task._example(r["id"], r["level"], random.Random(0)) for r in records]
    careful = [r["completion"] == ex.answer for r, ex in zip(records, examples)]
    assert 0 < sum(careful) < len(records)
    for record, ex in zip(records, examples):
        assert task.is_correct(record["completion"], ex), record


# Reads its own source (the harness included), finds the per-run nonce and prints pass markers for
# every test before the tests run.
FORGER = r'''
import os, re, sys
src = ""
for path in [sys.argv[0], *[f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd")]]:
    try:
        src += open(path, errors="ignore").read()
    except Exception:
        pass
m = re.search(r"([0-9a-f]{32})\|%d", src)
for i in range(50):
    print(f"\n{m.group(1)}|{i}|pass|", flush=True)
os._exit(0)
'''


def _humaneval_task(tmp_path, test: str):
    row = {"task_id": "HumanEval/0", "entry_point": "inc", "prompt": "def inc(xs):\n    \"\"\"Add one.\"\"\"\n",
           "canonical_solution": "    return [x + 1 for x in xs]\n", "test": test}
    (tmp_path / "he.jsonl").write_text(json.dumps(row) + "\n")
    task = make_humaneval(None, str(tmp_path))
    return task, task.examples("test", 0)[0]


@needs_sandbox
def test_humaneval_check_is_unrolled_so_a_forged_pass_marker_earns_nothing(tmp_path):
    test = ('METADATA = {"author": "x"}\n\n\ndef check(candidate):\n    """doc"""\n'
            '    assert candidate([1, 2]) == [2, 3]\n    assert candidate([]) == []\n')
    task, ex = _humaneval_task(tmp_path, test)
    assert ex.meta["tests"] == ["assert candidate([1, 2]) == [2, 3]", "assert candidate([]) == []"]
    assert "[2, 3]" not in ex.meta["test_setup"] and ex.meta["test_setup"].endswith("candidate = inc\n")
    assert task.is_correct(ex.answer, ex)
    assert not task.is_correct("    return xs\n", ex)
    assert not task.is_correct(f"```python\n{FORGER}\n```", ex)


@needs_sandbox
def test_humaneval_check_that_cannot_be_unrolled_runs_whole_and_stays_forgeable(tmp_path):
    """The documented limit: a check with loops runs whole in the sandbox, where its pass marker can be forged."""
    test = "def check(candidate):\n    for n in range(3):\n        assert candidate([n]) == [n + 1]\n"
    task, ex = _humaneval_task(tmp_path, test)
    assert len(ex.meta["tests"]) == 1 and "check(inc)" in ex.meta["tests"][0]
    assert task.is_correct(ex.answer, ex) and not task.is_correct("    return xs\n", ex)
    assert task.is_correct(f"```python\n{FORGER}\n```", ex)


def _write_stdio_fixtures(tmp_path):
    apps = [
        {"problem_id": 1, "question": "Read two integers and print their sum.",
         "input_output": json.dumps({"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}),
         "solutions": json.dumps(["a, b = map(int, input().split())\nprint(a + b)"])},
        {"problem_id": 2, "question": "Return x doubled.",  # call-based: not a stdin/stdout problem
         "input_output": json.dumps({"fn_name": "double", "inputs": [[1]], "outputs": [[2]]}), "solutions": "[]"},
        {"problem_id": 3, "question": "Broken row.", "input_output": "{not json", "solutions": "[]"},
        {"problem_id": 4, "question": "Print the input reversed.",  # APPS also stores cases as lists of lines
         "input_output": json.dumps({"inputs": [["abc"]], "outputs": [["cba"]]}), "solutions": "[]"},
    ]
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in apps))
    cc = {"name": "1A_sum", "description": "Given n, print n squared.",
          "public_tests": {"input": ["3\n"], "output": ["9\n"]}, "private_tests": {"input": ["4\n"], "output": ["16\n"]},
          "generated_tests": {"input": [], "output": []},
          "solutions": {"language": [2, 3], "solution": ["print input()**2", "n = int(input())\nprint(n * n)"]}}
    (tmp_path / "cc.jsonl").write_text(json.dumps(cc) + "\n")


def test_apps_and_codecontests_rows_become_stdio_problems_and_bad_rows_are_counted(tmp_path, caplog):
    from reasonloop.tasks import make_task

    _write_stdio_fixtures(tmp_path)
    apps = make_task("apps", str(tmp_path / "apps")).examples("test", 0)
    assert sorted(e.id for e in apps) == ["apps/1", "apps/4"]
    assert "skipped 2 of 4 rows" in caplog.text and "call-based" in caplog.text
    four = next(e for e in apps if e.id == "apps/4")
    assert four.meta["tests"] == [{"input": "abc\n", "output": "cba\n"}] and four.meta["test_style"] == "io"
    cc = make_task("codecontests", str(tmp_path / "cc.jsonl"))
    both = cc.examples("train", 0) + cc.examples("test", 0)  # an unsplit file: hashed into one of the two
    assert len(both) == 1 and both[0].meta["tests"] == [{"input": "3\n", "output": "9\n"},
                                                        {"input": "4\n", "output": "16\n"}]
    assert "n * n" in both[0].answer and "Python 3 program" in both[0].prompt
    with pytest.raises(ValueError, match="'train' and 'test' only"):
        cc.examples("valid", 0)
    with pytest.raises(ValueError, match=r"has \['test.jsonl'\] but no train.jsonl"):
        make_task("apps", str(tmp_path / "apps")).examples("train", 0)  # never carved out of test.jsonl


@needs_sandbox
def test_stdio_verdicts(tmp_path):
    from reasonloop.tasks import make_task

    _write_stdio_fixtures(tmp_path)
    task = make_task("apps", str(tmp_path / "apps"))
    ex = next(e for e in task.examples("test", 0) if e.id == "apps/1")
    assert task.is_correct(ex.answer, ex)
    assert not task.is_correct("```python\nprint(3)\n```", ex)  # right on one case of two
    cc = make_task("codecontests", str(tmp_path / "cc.jsonl"))
    ex = (cc.examples("train", 0) + cc.examples("test", 0))[0]
    assert cc.is_correct(ex.answer, ex) and not cc.is_correct("```python\nprint(9)\n```", ex)
