"""The one loader of record files: JSONL (streamed), JSON, CSV, parquet, `save_to_disk` directories, hub ids.

Every recipe and task that reads rows from a file goes through here (`load_rows` for one table,
`load_splits` for a source with train/test splits, `read_jsonl` for one JSONL file), so the data
policy is the same everywhere (docs/reliability.md):

- JSONL is read line by line with a byte bound: a record longer than `MAX_RECORD_BYTES` is skipped
  (counted and logged) without ever being held in memory whole, so one 5 MB line cannot exhaust RAM.
- Blank lines are ignored; lines that are not UTF-8, not JSON, or not a JSON object are skipped,
  counted and logged with the line number of the first of each kind.
- An empty file, or one with no usable record, is a `DataError` naming the file.
- Rows missing a wanted string field are skipped and counted by `select_text_fields`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from reasonloop.errors import UserError, first_line

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1 << 20  # 1 MiB: far above any prompt a model here can take; larger lines are skipped
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SPLIT_WORDS = {"train": ("train",), "test": ("test", "validation", "valid", "eval", "dev")}
_DRAIN_CHUNK = 1 << 16


class DataError(UserError):
    """A dataset that cannot be loaded, or one with no usable rows."""


def iter_jsonl(path: Path, skips: Counter, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[dict]:
    """The JSON objects of a JSONL file, one per line, streamed; bad lines go to `skips` ("kind" -> count,
    "kind@line" -> first line number) instead of raising."""
    with open(path, "rb") as f:
        lineno = 0
        while True:
            line = f.readline(max_record_bytes + 1)
            if not line:
                return
            lineno += 1
            if len(line.rstrip(b"\r\n")) > max_record_bytes:
                while line and not line.endswith(b"\n"):  # drain the rest of the line in bounded chunks
                    line = f.readline(_DRAIN_CHUNK)
                _skip(skips, f"over {max_record_bytes} bytes", lineno)
                continue
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                _skip(skips, "not UTF-8", lineno)
                continue
            try:
                record = json.loads(text)
            except ValueError:
                _skip(skips, "malformed JSON", lineno)
                continue
            if not isinstance(record, dict):
                _skip(skips, "not a JSON object", lineno)
                continue
            yield record


def _skip(skips: Counter, kind: str, lineno: int) -> None:
    skips[kind] += 1
    skips.setdefault(f"{kind}@line", lineno)


def describe_skips(skips: Counter) -> str:
    """'2 malformed JSON (first at line 4), 1 over 1048576 bytes (first at line 7)'."""
    return ", ".join(f"{n} {kind} (first at line {skips[kind + '@line']})"
                     for kind, n in skips.items() if not kind.endswith("@line"))


def read_jsonl(path: str | Path, max_record_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    """Every usable record of a JSONL file; skipped lines are logged; empty or all-bad is a DataError."""
    path = Path(path)
    skips: Counter = Counter()
    try:
        rows = list(iter_jsonl(path, skips, max_record_bytes))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    n_skipped = sum(v for k, v in skips.items() if not k.endswith("@line"))
    if not rows and not n_skipped:
        raise DataError(f"{path} is empty: give one JSON object per line")
    if not rows:
        raise DataError(f"{path}: no usable records ({describe_skips(skips)})")
    if n_skipped:
        log.warning("%s: skipped %d of %d lines: %s", path, n_skipped, len(rows) + n_skipped, describe_skips(skips))
    return rows


def read_table(path: str | Path, max_record_bytes: int = MAX_RECORD_BYTES) -> list[dict]:
    """The rows of one file: .jsonl (streamed), .json (JSON lines, or one array of objects), .csv, .parquet."""
    path = Path(path)
    kind = BUILDERS.get(path.suffix)
    if kind is None:
        raise DataError(f"unsupported data file {str(path)!r}: use .jsonl, .json, .parquet or .csv")
    if kind == "json":
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
        if path.suffix == ".json" and head.startswith(b"["):
            return _read_json_array(path, max_record_bytes)
        return read_jsonl(path, max_record_bytes)
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for a bad file
        raise DataError(f"cannot load {str(path)!r}: {type(exc).__name__}: {first_line(exc)}") from None
    rows = [dict(r) for r in ds]
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def _read_json_array(path: Path, max_record_bytes: int) -> list[dict]:
    size = path.stat().st_size
    if size > 64 * max_record_bytes:  # a JSON array is parsed whole; bound it, JSONL streams instead
        raise DataError(f"{path} is a {size}-byte JSON array; convert it to JSONL (one object per line) to stream it")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON: {first_line(exc)}") from None
    rows = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
    if len(rows) < (len(data) if isinstance(data, list) else 1):
        log.warning("%s: skipped %d entries that are not JSON objects", path, len(data) - len(rows) if isinstance(data, list) else 1)
    if not rows:
        raise DataError(f"{path}: no JSON objects in the array")
    return rows


def looks_like_path(source: str) -> bool:
    """A name meant as a local path: starts with . / ~, has a file suffix, or a backslash (never a hub id)."""
    return (source.startswith((".", "/", "~")) or "\\" in source or Path(source).suffix in BUILDERS
            or not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", source))


def load_rows(source: str, split: str = "train") -> list[dict]:
    """The rows of a file, a `save_to_disk` directory (its `split`), or a hub dataset id."""
    path = Path(source).expanduser()
    if not source:
        raise DataError("no data source given")
    if path.is_dir():  # written by Dataset.save_to_disk
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(f"cannot load dataset directory {source!r}: {type(exc).__name__}: {first_line(exc)}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{source!r} has no {split!r} split (it has {sorted(ds)})")
            ds = ds[split]
        return [dict(r) for r in ds]
    if path.is_file():
        return read_table(path)
    if looks_like_path(source):
        raise DataError(f"cannot load dataset {source!r}: the file does not exist")
    import datasets

    try:
        return [dict(r) for r in datasets.load_dataset(source, split=split)]
    except Exception as exc:
        raise DataError(f"cannot load dataset {source!r}: {type(exc).__name__}: {first_line(exc)}") from None


def load_splits(source: str) -> dict[str, list[dict]]:
    """Named splits of a source (`data` when it has no split names): `hf:owner/name[:config]`, a
    `save_to_disk` directory, one file, or a directory of files (split from file names)."""
    import datasets

    if source.startswith("hf:"):
        name, _, config = source[3:].partition(":")
        try:
            return {k: [dict(r) for r in v] for k, v in datasets.load_dataset(name, config or None).items()}
        except Exception as exc:
            raise DataError(f"cannot load {source!r}: {type(exc).__name__}: {first_line(exc)}") from None
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data source {source!r} does not exist (give a file, a directory or hf:NAME)")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise DataError(f"cannot load dataset directory {source!r}: {type(exc).__name__}: {first_line(exc)}") from None
        splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"data": ds}
        return {k: [dict(r) for r in v] for k, v in splits.items()}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in BUILDERS)
    if not files:
        raise DataError(f"no {sorted(BUILDERS)} files under {source!r}")
    builders = {BUILDERS.get(f.suffix) for f in files}
    if None in builders or len(builders) > 1:
        raise DataError(f"mixed or unknown file types under {source!r}: {sorted(f.suffix for f in files)}")
    out: dict[str, list[dict]] = {}
    for f in files:
        out.setdefault(split_of_filename(f.name), []).extend(read_table(f))
    return out


def split_of_filename(name: str) -> str:
    words = set(re.findall(r"[a-z]+", name.lower()))
    for split, aliases in SPLIT_WORDS.items():
        if words & set(aliases):
            return split
    return "data"


def column_names(rows: list[dict]) -> list[str]:
    """Every key any row has, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r))


def select_text_fields(rows: list[dict], fields: dict[str, str], source: str) -> list[dict[str, str]]:
    """Map `fields` (our name -> column name) over rows; rows missing a string value are skipped and counted."""
    kept, skipped = [], 0
    for row in rows:
        values = {ours: row.get(col) for ours, col in fields.items()}
        if all(isinstance(v, str) and v for v in values.values()):
            kept.append(values)
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d of %d rows without string fields %s", source, skipped, len(rows), list(fields.values()))
    if not kept:
        raise DataError(f"{source}: no usable rows (need string columns {list(fields.values())})")
    return kept
