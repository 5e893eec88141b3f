"""Any JSONL / JSON / CSV / parquet / `save_to_disk` / Hub dataset as a task, by column mapping.

    task=jsonl:prompt=question,answer=solution,gold=boxed,meta=level+type   data_dir=/data/math.jsonl

Spec keys (all optional; `|` lists fallback columns, `+` lists several meta columns):

- `prompt=COL|COL`   column(s) holding the problem (default `prompt|question|problem`)
- `answer=COL|COL`   column(s) holding the reference (default `answer|solution`)
- `gold=auto|raw|boxed|gsm8k`  how to read the reference: `boxed` takes the last `\\boxed{}`, `gsm8k`
  the text after `####`, `integer` an integer, `auto` tries boxed and `####`, then the raw text
  when it is short enough to be an answer rather than an unmarked solution
- `meta=COL+COL`     extra columns copied into `Example.meta` (and so passed to reward functions)
- `template=think_answer|boxed|raw`  how the prompt is phrased (see `TEMPLATES`)
- `test_frac=0.1`    used only when the source lacks native train/test splits
- `KEY=VALUE` for any other key: keep rows whose meta KEY matches (`level=5` matches "Level 5")

`data_dir` is a file, a directory of files (split from file names: train/test/validation), a
`save_to_disk` directory, or `hf:owner/name[:config]` to load from the Hub (opt-in; never implicit).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reasonloop.data import io
from reasonloop.data.records import Example
from reasonloop.tasks import TaskError
from reasonloop.tasks.hygiene import dedup, in_test_split
from reasonloop.rewards.core import RewardSpec
from reasonloop.rewards.answer_format import format_reward
from reasonloop.rewards.math_grader import LENIENT, GradePolicy, gold_from_solution, grade, last_boxed, make_accuracy_reward

log = logging.getLogger(__name__)

TEMPLATES = {
    "think_answer": (
        "{question}\n\nThink step by step inside <think></think>, then give only the final answer inside "
        "<answer></answer>."
    ),
    "boxed": "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
    "raw": "{question}",
}


AUTO_RAW_MAX_CHARS = 32


class DatasetLoadError(TaskError):
    """The data source is missing, unreadable, or lacks the mapped columns."""


@dataclass(frozen=True)
class ColumnMap:
    prompt: tuple[str, ...] = ("prompt", "question", "problem")
    answer: tuple[str, ...] = ("answer", "solution")
    gold: str = "auto"  # auto | raw | boxed | gsm8k | integer
    meta: tuple[str, ...] = ()
    template: str = "think_answer"
    test_frac: float = 0.1
    where: tuple[tuple[str, str], ...] = ()  # (meta key, wanted value) row filters
    renames: tuple[tuple[str, str], ...] = ()  # (column, meta key): one meta name for differing sources
    int_meta: tuple[str, ...] = ()  # meta keys stored as the integer in their text ("Level 5" -> 5)


def parse_spec(arg: str | None, base: ColumnMap = ColumnMap()) -> ColumnMap:
    """`prompt=question,answer=solution,level=5` on top of `base` (a loader's defaults)."""
    updates: dict[str, Any] = {}
    where = list(base.where)
    for part in filter(None, (arg or "").split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise DatasetLoadError(f"bad column spec {part!r}: expected KEY=VALUE")
        key, value = key.strip(), value.strip()
        if key in ("prompt", "answer"):
            updates[key] = tuple(value.split("|"))
        elif key == "meta":
            updates[key] = tuple(value.split("+"))
        elif key == "test_frac":
            try:
                updates[key] = float(value)
            except ValueError:
                raise DatasetLoadError(f"bad column spec {part!r}: test_frac must be a number in [0, 1]") from None
            if not 0 <= updates[key] <= 1:
                raise DatasetLoadError(f"bad column spec {part!r}: test_frac must be in [0, 1]")
        elif key in ("gold", "template"):
            updates[key] = value
        else:
            where.append((key, value))
    spec = ColumnMap(**{**base.__dict__, **updates, "where": tuple(where)})
    if spec.template not in TEMPLATES:
        raise DatasetLoadError(f"unknown template {spec.template!r}; known: {sorted(TEMPLATES)}")
    return spec


def load_splits(source: str) -> dict[str, list[dict[str, Any]]]:
    """Named splits of a source as rows (`data` when it has no split names), via the one loader
    (`reasonloop.data.io`); a source that cannot be read is a DatasetLoadError."""
    try:
        return io.load_splits(source)
    except io.DataError as exc:
        raise DatasetLoadError(str(exc)) from None


def read_gold(raw: Any, how: str) -> str | None:
    """The reference answer string from a reference column, per `ColumnMap.gold`."""
    text = str(raw).strip() if raw is not None else ""
    if not text:
        return None
    if how == "raw":
        return text
    if how == "boxed":
        boxed = last_boxed(text)
        return boxed.strip() if boxed is not None else None
    if how == "gsm8k":
        return text.rsplit("####", 1)[1].strip().replace(",", "") if "####" in text else None
    if how == "integer":
        return str(int(float(text))) if re.fullmatch(r"-?\d+(?:\.0*)?", text) else None
    if how == "auto":  # a long text without a marked answer is a solution we cannot read
        return gold_from_solution(text) or (text if len(text) <= AUTO_RAW_MAX_CHARS else None)
    raise DatasetLoadError(f"unknown gold mode {how!r}; use auto, raw, boxed, gsm8k or integer")


def _first_present(row: dict[str, Any], columns: tuple[str, ...]) -> Any:
    for c in columns:
        if row.get(c) not in (None, ""):
            return row[c]
    return None


def _meta_matches(value: Any, wanted: str) -> bool:
    """`level=5` matches 5, "5" and "Level 5"; other values compare as case-insensitive strings."""
    if wanted.isdigit():
        return re.findall(r"\d+", str(value)) == [wanted]
    return str(value).lower() == wanted.lower()


def _read_meta(row: dict[str, Any], spec: ColumnMap) -> dict[str, Any]:
    renames = dict(spec.renames)
    meta = {renames.get(k, k): row[k] for k in spec.meta if row.get(k) is not None}
    for k in spec.int_meta:
        digits = re.findall(r"-?\d+", str(meta.get(k, "")))
        if len(digits) == 1:
            meta[k] = int(digits[0])
    return meta


def rows_to_examples(rows: Any, spec: ColumnMap, source_name: str) -> list[Example]:
    """Map dataset rows to Examples; rows without a prompt or a readable gold are dropped (counted)."""
    columns = io.column_names(rows)
    for wanted in (spec.prompt, spec.answer):
        if not set(wanted) & set(columns):
            raise DatasetLoadError(f"{source_name}: none of the columns {wanted} in {columns}")
    template = TEMPLATES[spec.template]
    out, dropped = [], 0
    for i, row in enumerate(rows):
        question, reference = _first_present(row, spec.prompt), _first_present(row, spec.answer)
        gold = read_gold(reference, spec.gold) if question is not None else None
        if gold is None:
            dropped += 1
            continue
        meta = _read_meta(row, spec)
        if not all(_meta_matches(meta.get(k, row.get(k)), v) for k, v in spec.where):
            continue
        meta.update(id=f"{source_name}/{row.get('id', row.get('unique_id', i))}", question=str(question))
        out.append(Example(prompt=template.format(question=question), answer=gold, meta=meta))
    if dropped:
        log.warning("%s: dropped %d rows without a prompt or a readable %r gold", source_name, dropped, spec.gold)
    return out


@dataclass
class DatasetTask:
    """A task over a finite table of problems, graded by the math grader (reward reuses `is_correct`)."""

    name: str
    source: str
    spec: ColumnMap = ColumnMap()
    policy: GradePolicy = GradePolicy()
    _cache: dict[str, list[Example]] = field(default_factory=dict, repr=False)

    def split_examples(self, split: str) -> list[Example]:
        """All examples of a split, deduplicated. Native train/test splits are used when both exist;
        otherwise every row is pooled and split by a content hash (`hygiene.in_test_split`)."""
        if split not in ("train", "test"):
            raise DatasetLoadError(f"split must be 'train' or 'test', not {split!r}")
        if split not in self._cache:
            splits = load_splits(self.source)
            if "train" in splits and "test" in splits:
                rows = rows_to_examples(splits[split], self.spec, self.name)
            else:
                pooled = [e for s in splits.values() for e in rows_to_examples(s, self.spec, self.name)]
                rows = [e for e in pooled if in_test_split(e.meta["question"], self.spec.test_frac) == (split == "test")]
            self._cache[split] = dedup(rows)
        return self._cache[split]

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """`n` examples (all of them when fewer exist), shuffled deterministically by `seed`."""
        pool = list(self.split_examples(split))
        if not pool:
            raise DatasetLoadError(f"{self.name} has no {split!r} examples (test_frac={self.spec.test_frac})")
        random.Random(seed).shuffle(pool)
        return pool[:n]

    def is_correct(self, completion: str, example: Example) -> bool:
        return grade(completion, example.answer, example.prompt, self.policy).correct

    def rewards(self) -> list[RewardSpec]:
        return [RewardSpec("accuracy", make_accuracy_reward(self.policy), 1.0), RewardSpec("format", format_reward, 0.1)]


def make_task(arg: str | None, data_dir: str | None) -> DatasetTask:
    """Registry factory for `jsonl` / `parquet` / `dataset`: the file type is read from `data_dir`."""
    if not data_dir:
        raise DatasetLoadError("a table task needs data_dir=<file, directory or hf:NAME>")
    spec = parse_spec(arg)
    return DatasetTask(name=Path(data_dir).stem or "table", source=data_dir, spec=spec, policy=policy_for(spec.template))


def policy_for(template: str) -> GradePolicy:
    """Strict tags for the think/answer template; free-form prompts can only be graded leniently."""
    return GradePolicy() if template == "think_answer" else LENIENT
