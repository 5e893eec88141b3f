"""Loaders for GSM8K / MATH / MATH-500 / AIME / generic tables, on fixture files written to tmp dirs."""

import json

import datasets
import pytest

from reasonloop.tasks.base import Task
from reasonloop.tasks.math_datasets import make_aime, make_gsm8k, make_math, make_math500
from reasonloop.tasks.tabular import DatasetLoadError, make_task, parse_spec
from reasonloop.rewards.core import compute_rewards


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GSM_TRAIN = [
    {"question": f"Sam has {i} pens and buys {i + 3} more. How many pens?", "answer": f"{i}+{i + 3}=<<>>{2 * i + 3}\n#### {2 * i + 3:,}"}
    for i in range(1000, 1010)
]
GSM_TEST = [{"question": "A farmer has 3 cows and 4 hens. How many animals?", "answer": "3+4=7\n#### 7"}]


@pytest.fixture
def gsm_dir(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", GSM_TRAIN)
    write_jsonl(tmp_path / "test.jsonl", GSM_TEST)
    return tmp_path


def test_gsm8k_native_splits_gold_and_prompt_format(gsm_dir):
    task = make_gsm8k(None, str(gsm_dir))
    assert isinstance(task, Task)
    train = task.examples("train", n=100, seed=0)
    assert len(train) == 10 and {e.answer for e in train} == {str(2 * i + 3) for i in range(1000, 1010)}  # "2,003" -> "2003"
    (test,) = task.examples("test", n=5)
    assert test.answer == "7" and "<think>" in test.prompt and "<answer>" in test.prompt
    assert test.meta["question"] in test.prompt


def test_examples_are_deterministic_in_seed(gsm_dir):
    task = make_gsm8k(None, str(gsm_dir))
    assert task.examples("train", 4, seed=1) == task.examples("train", 4, seed=1)
    assert [e.id for e in task.examples("train", 10, seed=1)] != [e.id for e in task.examples("train", 10, seed=2)]


def test_task_reward_agrees_with_is_correct(gsm_dir):
    task = make_gsm8k(None, str(gsm_dir))
    (ex,) = task.examples("test", 1)
    good, bad = "<think>3+4</think><answer>7</answer>", "<think>3+4</think><answer>8</answer>"
    assert task.is_correct(good, ex) and not task.is_correct(bad, ex)
    result = compute_rewards(task.rewards(), [good, bad], [ex, ex])
    assert result.components["accuracy"].tolist() == [1.0, 0.0]
    assert result.total[0] > result.total[1]


MATH_ROWS = [
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "It is $\\boxed{\\frac{3}{4}}$.", "level": "Level 2", "type": "Algebra"},
    {"problem": "Expand $(x+1)^2$.", "solution": "We get $\\boxed{x^2+2x+1}$.", "level": "Level 5", "type": "Algebra"},
    {"problem": "How many primes are below 10?", "solution": "2,3,5,7 so $\\boxed{4}$.", "level": "Level 5", "type": "Number Theory"},
    {"problem": "No boxed answer here.", "solution": "We cannot decide this without more information.", "level": "Level 1", "type": "Algebra"},
]


def test_math_parquet_boxed_gold_levels_subjects_and_filters(tmp_path):
    datasets.Dataset.from_list(MATH_ROWS).to_parquet(str(tmp_path / "test.parquet"))
    datasets.Dataset.from_list(MATH_ROWS[:1]).to_parquet(str(tmp_path / "train.parquet"))
    task = make_math(None, str(tmp_path))
    test = {e.meta["question"]: e for e in task.examples("test", 10)}
    assert len(test) == 3  # the row without a boxed answer is dropped
    expand = test["Expand $(x+1)^2$."]
    assert (expand.answer, expand.meta["level"], expand.meta["subject"]) == ("x^2+2x+1", 5, "Algebra")
    assert task.is_correct("<think>square it</think><answer>1 + 2x + x^2</answer>", expand)  # symbolic
    assert not task.is_correct("<think>copy</think><answer>(x+1)^2</answer>", expand)  # echoes the prompt
    hard = make_math("level=5,subject=Number Theory", str(tmp_path)).examples("test", 10)
    assert [e.answer for e in hard] == ["4"]


def test_math500_from_save_to_disk_uses_answer_column_and_is_eval_only(tmp_path):
    rows = [{"problem": "What is 6*7?", "solution": "... \\boxed{42}", "answer": "42", "subject": "Prealgebra", "level": 1, "unique_id": "t/1.json"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "m500"))
    task = make_math500(None, str(tmp_path / "m500"))
    (ex,) = task.examples("test", 500)
    assert ex.answer == "42" and ex.meta["subject"] == "Prealgebra" and ex.id == "math500/t/1.json"
    with pytest.raises(DatasetLoadError, match="no 'train' examples"):
        task.examples("train", 1)


def test_aime_integer_answers(tmp_path):
    write_jsonl(tmp_path / "aime.jsonl", [{"Problem": "Find N.", "Answer": "033"}, {"Problem": "Find M.", "Answer": 7.0}])
    task = make_aime(None, str(tmp_path / "aime.jsonl"))
    assert sorted(e.answer for e in task.examples("test", 30)) == ["33", "7"]


def test_generic_jsonl_column_mapping_and_hash_split_is_disjoint(tmp_path):
    rows = [{"q": f"Problem number {i}: add {i} and {i}.", "sol": f"#### {2 * i}", "difficulty": i % 3} for i in range(200)]
    rows += rows[:20]  # duplicates are removed
    write_jsonl(tmp_path / "mine.jsonl", rows)
    task = make_task("prompt=q,answer=sol,gold=gsm8k,meta=difficulty,test_frac=0.25", str(tmp_path / "mine.jsonl"))
    train, test = task.examples("train", 10_000), task.examples("test", 10_000)
    assert len(train) + len(test) == 200
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert 25 <= len(test) <= 75  # ~25% by content hash
    assert all(e.answer == str(2 * int(e.meta["question"].split()[2][:-1])) for e in test)
    assert {e.meta["difficulty"] for e in train} == {0, 1, 2}


def test_column_spec_errors_are_clear(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"a": "1", "b": "2"}])
    with pytest.raises(DatasetLoadError, match="none of the columns"):
        make_task(None, str(tmp_path / "x.jsonl")).examples("test", 1)
    with pytest.raises(DatasetLoadError, match="KEY=VALUE"):
        parse_spec("prompt")
    with pytest.raises(DatasetLoadError, match="does not exist"):
        make_gsm8k(None, str(tmp_path / "missing")).examples("train", 1)
    with pytest.raises(DatasetLoadError, match="needs data_dir"):
        make_gsm8k(None, None)


def test_template_is_a_parameter(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"question": "What is 2+2?", "answer": "4"}])
    (ex,) = make_task("template=raw,test_frac=1", str(tmp_path / "t.jsonl")).examples("test", 1)
    assert ex.prompt == "What is 2+2?"
