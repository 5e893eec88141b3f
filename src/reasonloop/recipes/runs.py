"""`reasonloop runs [DIR] [--clean] [--yes]`: the runs under a directory, and a way to remove the dead ones.

A run is a directory holding reasonloop's marker (`reasonloop-run.json`, docs/run-directories.md); nothing
else is ever listed or removed. For each run: the command and preset, the task, steps (or iterations) done
of the total, held-out greedy pass@1 before → after, its state and its size on disk.

States:
- running      a process is writing it now (it holds the run's lock; its pid is shown);
- finished     `summary.json` is written (the command ran to its end);
- resumable    not finished, but a checkpoint exists: the same command with `output_dir=` continues it;
- failed       not finished, no checkpoint, but it logged progress (stopped before its first checkpoint);
- empty        not finished, nothing logged and no checkpoint.

`--clean` removes the failed and empty runs after asking (or at once with `--yes`); a running run is never one of
them, however little it has written yet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reasonloop.errors import UserError
from reasonloop.train.checkpoint import list_checkpoints
from reasonloop.train.run import BEFORE, MARKER, recorded_values, writer_pid

DEAD = ("failed", "empty")


@dataclass(frozen=True)
class RunInfo:
    path: Path
    command: str
    preset: str
    task: str
    done: int | None  # last logged step or iteration
    total: int | None  # the configured steps or iterations
    before: float | None  # overall held-out greedy pass@1
    after: float | None
    state: str
    size: int  # bytes on disk


def find_runs(root: Path, max_depth: int = 3) -> list[RunInfo]:
    """Every run at most `max_depth` levels below `root` (`root` itself included), sorted by path."""
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; give the directory that holds your runs (default: runs)")
    found = []
    for depth in range(max_depth + 1):
        for marker in root.glob("/".join(["*"] * depth + [MARKER])):
            found.append(describe(marker.parent))
    return sorted(found, key=lambda r: str(r.path))


def describe(run: Path) -> RunInfo:
    marker = _read_json(run / MARKER)
    marker = marker if isinstance(marker, dict) else {}
    try:
        config = recorded_values(run / "config.yaml")
    except Exception:  # missing or unreadable: the listing shows what it can
        config = {}
    summary = _read_json(run / "summary.json")
    before = _overall((summary or {}).get("before") or _read_json(run / BEFORE))
    after = _overall((summary or {}).get("after"))
    done = _last_step(run / "metrics.jsonl")
    if (pid := writer_pid(run)) is not None:
        state = f"running (pid {pid})" if pid > 0 else "running"
    elif summary is not None:
        state = "finished"
    elif list_checkpoints(run):
        state = "resumable"
    else:
        state = "failed" if done else "empty"
    total = config.get("steps", config.get("iterations"))
    task = config.get("task", "")
    return RunInfo(run, str(marker.get("command", "?")), str((summary or {}).get("preset", "")),
                   str(task) if task is not None else "", done, total if isinstance(total, int) else None,
                   before, after, state, _size(run))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _overall(table: Any) -> float | None:
    try:
        return float(table["overall"]["pass@1_greedy"])
    except (TypeError, KeyError, ValueError):
        return None


def _last_step(path: Path) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(runs: list[RunInfo], root: Path) -> str:
    rows = [("run", "command", "task", "steps", "pass@1 before -> after", "state", "size")]
    for r in runs:
        command = r.command + (f" ({r.preset})" if r.preset and r.preset != r.command else "")
        steps = "-" if r.done is None and r.total is None else f"{r.done or 0}/{r.total if r.total is not None else '?'}"
        acc = (f"{r.before:.3f}" if r.before is not None else "-") + " -> " + (f"{r.after:.3f}" if r.after is not None else "-")
        name = str(r.path.relative_to(root)) if r.path != root else "."
        rows.append((name, command, r.task, steps, acc, r.state, _human(r.size)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="reasonloop runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", nargs="?", default="runs", help="directory holding runs (default: runs)")
    parser.add_argument("--clean", action="store_true", help="remove the failed and empty runs (asks first)")
    parser.add_argument("--yes", action="store_true", help="with --clean: do not ask")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    runs = find_runs(root)
    if not runs:
        print(f"no reasonloop runs under {root}")
        return 0
    print(table(runs, root))
    if not args.clean:
        return 0
    dead = [r for r in runs if r.state in DEAD]
    if not dead:
        print("nothing to clean: every run is finished, resumable or running")
        return 0
    print(f"\n{len(dead)} failed or empty run(s), {_human(sum(r.size for r in dead))}:")
    for r in dead:
        print(f"  {r.path}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError("--clean asks before removing runs, but there is no terminal to ask; add --yes")
        if input("remove them? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 0
    for r in dead:
        shutil.rmtree(r.path)
    print(f"removed {len(dead)} run(s)")
    return 0
