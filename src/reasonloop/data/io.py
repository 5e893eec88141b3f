"""Load (prompt, completion)-style records from JSONL, parquet, a saved HF dataset or a hub id, via `datasets`.

Malformed rows (missing or non-string fields) are skipped, counted and logged, never fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset that cannot be loaded, or one with no usable rows."""


def load_rows(source: str, split: str = "train") -> list[dict]:
    import datasets

    path = Path(source)
    try:
        if path.is_dir():  # written by Dataset.save_to_disk
            ds = datasets.load_from_disk(str(path))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        elif path.is_file():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise DataError(f"unsupported data file {source!r}: use .jsonl, .json, .parquet or .csv")
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot load dataset {source!r}: {type(exc).__name__}: {exc}") from None
    return list(ds)


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
