"""Loaders for the standard maths benchmarks, as column mappings over `tabular.DatasetTask`.

| task      | expected columns (as published)                 | gold                   | splits      |
|-----------|-------------------------------------------------|------------------------|-------------|
| gsm8k     | question, answer (`... #### 42`)                | text after `####`      | train/test  |
| math      | problem, solution (`\\boxed{}`), level, type     | `answer` col or boxed  | train/test  |
| math500   | problem, solution, answer, subject, level       | `answer` column        | test only   |
| aime, amc | problem/Problem, answer/Answer (integers)       | integer                | test only   |

`data_dir` is a local copy (file, directory, `save_to_disk`) or `hf:openai/gsm8k:main` to fetch from
the Hub explicitly. The task arg adds filters or overrides: `math:level=5`, `math:subject=Algebra`.
MATH's `type` and MATH-500's `subject` are both exposed as `meta["subject"]`, levels as ints.
"""

from __future__ import annotations

from dataclasses import replace

from reasonloop.tasks.tabular import ColumnMap, DatasetLoadError, DatasetTask, parse_spec, policy_for

GSM8K = ColumnMap(prompt=("question",), answer=("answer",), gold="gsm8k")
MATH = ColumnMap(
    prompt=("problem",),
    answer=("answer", "solution"),
    gold="auto",
    meta=("level", "subject", "type", "unique_id"),
    renames=(("type", "subject"),),
    int_meta=("level",),
)
COMPETITION = ColumnMap(prompt=("problem", "Problem", "question"), answer=("answer", "Answer"), gold="integer", test_frac=1.0)


def _build(name: str, base: ColumnMap, arg: str | None, data_dir: str | None) -> DatasetTask:
    if not data_dir:
        raise DatasetLoadError(
            f"{name} needs data_dir: a local copy (jsonl/parquet/save_to_disk) or hf:NAME to download it"
        )
    spec = parse_spec(arg, base)
    return DatasetTask(name=name, source=data_dir, spec=spec, policy=policy_for(spec.template))


def make_gsm8k(arg: str | None, data_dir: str | None) -> DatasetTask:
    return _build("gsm8k", GSM8K, arg, data_dir)


def make_math(arg: str | None, data_dir: str | None) -> DatasetTask:
    return _build("math", MATH, arg, data_dir)


def make_math500(arg: str | None, data_dir: str | None) -> DatasetTask:
    return _build("math500", replace(MATH, test_frac=1.0), arg, data_dir)


def make_aime(arg: str | None, data_dir: str | None) -> DatasetTask:
    return _build("aime", COMPETITION, arg, data_dir)


def make_amc(arg: str | None, data_dir: str | None) -> DatasetTask:
    return _build("amc", COMPETITION, arg, data_dir)
