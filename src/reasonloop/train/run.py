"""A run directory: resolved config, metrics.jsonl, summary.json, the trackers (`logger=`), progress bars.

Run directories are owned (docs/run-directories.md). `Run(cfg, command)` only looks: it refuses an
output_dir that is a file, a non-empty directory that is not a reasonloop run, a run of another
command, any existing run under `resume=never`, and a run whose recorded config differs from this one
in a key that changes results (unless `resume=force`); it picks the checkpoint to continue from
(`resume_from`) and checks that `steps` (or `iterations`) has not fallen below it. Nothing is written
until `start()`, which a recipe calls once its model, task and data have loaded: it creates the
directory (a default one atomically, with a suffix when the name is taken), takes the run's lock (a run
another process is writing is refused), writes `config.yaml` and
the marker `reasonloop-run.json` atomically, drops the metric and sample rows of the steps the resumed
run will redo, and opens the logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import OmegaConf

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked (every other check still holds)
    fcntl = None  # type: ignore[assignment]

from reasonloop import __version__
from reasonloop.config import flatten, save_config
from reasonloop.errors import UserError, note_run_dir
from reasonloop.train.checkpoint import ROW_FILES, checkpoint_rows, checkpoint_step, find_resume_checkpoint
from reasonloop.train.trackers import Trackers, check_available, parse_logger

log = logging.getLogger(__name__)

MARKER = "reasonloop-run.json"
BEFORE = "before.json"  # the held-out table before training, kept across resumes
LOCK = ".reasonloop.lock"  # flock-ed by the one process writing the run; it holds that process's pid
_HELD: dict[str, int] = {}  # run directory -> the locked lock file this process holds


class RunDirError(UserError):
    """output_dir cannot be used for this run: not ours, another command's, or a run under another config."""


def default_output_dir(command: str) -> str:
    return str(Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """0 keeps torch's default. One thread per *free* core: oversubscribed cores make torch crawl.

    Also flushes denormal floats (below ~1e-38) to zero on CPUs that support it: the tiny models
    produce them, and CPU arithmetic on denormals is slow (GRPO step 4-7% faster here).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


# -- config comparison ---------------------------------------------------------------------------------


def config_values(cfg: Any) -> dict[str, Any]:
    """The config as dotted leaf keys -> values, read back through YAML as config.yaml records it."""
    return flatten(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(OmegaConf.structured(cfg)))))


def writer_pid(run_dir: Path) -> int | None:
    """The pid of the process writing the run at `run_dir` (its lock is held), else None."""
    path = Path(run_dir) / LOCK
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pid = _lock_pid(fd)
        return -1 if pid is None else pid
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_pid(fd: int) -> int | None:
    """The pid a held lock file records (None while its writer has not written it yet)."""
    text = os.read(fd, 32).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def written_by(model_dir: str) -> str:
    """The command whose run wrote `model_dir` (a run's `model` directory: the run's marker beside it), else ''."""
    try:
        info = json.loads((Path(model_dir).parent / MARKER).read_text())
    except (OSError, ValueError):
        return ""
    return str(info.get("command", "")) if isinstance(info, dict) else ""


def recorded_values(path: Path) -> dict[str, Any]:
    """A recorded config.yaml as dotted leaf keys -> values."""
    return flatten(OmegaConf.to_container(OmegaConf.load(path)))


def config_hash(values: dict[str, Any], free: frozenset[str] | set[str]) -> str:
    """sha256 (16 hex digits) of the keys that change results."""
    kept = {k: v for k, v in sorted(values.items()) if k not in free}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_differences(recorded: dict[str, Any], current: dict[str, Any], free: frozenset[str] | set[str]) -> list[str]:
    """'key: old -> new' for every key both configs have that changes results and differs. Keys only one side
    has (added or removed by a reasonloop upgrade) are not compared."""
    return [f"{k}: {recorded[k]!r} -> {current[k]!r}" for k in sorted(current)
            if k in recorded and k not in free and recorded[k] != current[k]]


# -- the run ---------------------------------------------------------------------------------------------


class Run:
    """Owns the output directory of one command invocation (see the module docstring)."""

    def __init__(self, cfg: Any, command: str, tensorboard: bool = True):
        self.cfg, self.command = cfg, command
        names, optional = parse_logger(getattr(cfg, "logger", ""))
        if not tensorboard:
            names = [n for n in names if n != "tensorboard"]
        self._trackers_wanted = check_available(names, optional)  # a missing library fails here, before any write
        self._explicit = bool(cfg.output_dir)
        self.dir = Path(cfg.output_dir) if self._explicit else Path(default_output_dir(command))
        self.resume_from: Path | None = None
        """The checkpoint to continue from (verified), or None for a run from step 0."""
        self.resume_step: int | None = None
        """Its step (or iteration) number."""
        self.existing = False
        """output_dir holds this command's run, which this invocation continues (or reruns)."""
        self._created: str | None = None
        self._metrics = None
        self._trackers: Trackers | None = None
        self.started = False
        if self._explicit:
            self._inspect()

    # -- the checks, before anything is written ----------------------------------------------------------
    def _inspect(self) -> None:
        d, cfg = self.dir, self.cfg
        if not d.exists():
            if d.is_symlink():
                raise RunDirError(f"output_dir={d} is a dangling symbolic link; choose another output_dir")
            ancestor = next(p for p in d.absolute().parents if p.exists())
            if not ancestor.is_dir():
                raise RunDirError(f"cannot create output_dir={d}: {ancestor} is a file; choose another output_dir")
            return
        if not d.is_dir():
            raise RunDirError(f"output_dir={d} is a file, not a directory; choose another output_dir")
        try:
            entries = [e for e in d.iterdir() if e.name != LOCK]
        except OSError as exc:
            raise RunDirError(f"output_dir={d} cannot be read ({exc.strerror}); choose another output_dir") from exc
        if not entries:
            return
        marker = d / MARKER
        legacy = not marker.exists() and (d / "config.yaml").is_file() and (d / "checkpoints" / "latest").is_file()
        if not marker.exists() and not legacy:
            raise RunDirError(f"output_dir={d} is not empty and is not a reasonloop run (it has no {MARKER}); "
                              "reasonloop writes only into new or empty directories and its own runs: choose another "
                              "output_dir")
        if marker.exists():
            try:
                info = json.loads(marker.read_text())
                command = info["command"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise RunDirError(f"{marker} is unreadable, so output_dir={d} is not a run reasonloop can continue: "
                                  "choose another output_dir") from exc
            if command != self.command:
                raise RunDirError(f"output_dir={d} holds a `{command}` run; `{self.command}` will not write into it: "
                                  "choose another output_dir")
            self._created = info.get("created")
        resume = getattr(cfg, "resume", "auto")
        self.resume_from, warnings = find_resume_checkpoint(d)
        where = f" (latest checkpoint {self.resume_from.name})" if self.resume_from is not None else ""
        if resume == "never":
            raise RunDirError(f"output_dir={d} already holds a `{self.command}` run{where}; resume=never never "
                              "overwrites a run: choose a new output_dir, or resume=auto to continue this one")
        for w in warnings:
            log.warning(w)
        progress_key = getattr(type(cfg), "PROGRESS_KEY", "")
        free = set(getattr(type(cfg), "RESUME_FREE", ()))
        if self.resume_from is not None:
            self.resume_step = checkpoint_step(self.resume_from)
            free.add(progress_key)
        recorded_file = self.resume_from / "config.yaml" if self.resume_from is not None else d / "config.yaml"
        if not recorded_file.is_file():
            recorded_file = d / "config.yaml"
        if recorded_file.is_file():
            try:
                recorded = recorded_values(recorded_file)
            except Exception as exc:  # a damaged YAML file: OmegaConf/yaml raise many kinds
                raise RunDirError(f"{recorded_file} is unreadable ({type(exc).__name__}), so the run's config cannot "
                                  "be compared: choose another output_dir") from exc
            diffs = config_differences(recorded, config_values(cfg), free)
            if diffs:
                what = (f"its checkpoint {self.resume_from.name}" if self.resume_from is not None else "it")
                listed = "; ".join(diffs)
                if resume != "force":
                    raise RunDirError(f"output_dir={d} holds a `{self.command}` run, but {what} was made under a "
                                      f"different config ({listed}); choose a new output_dir, or resume=force to "
                                      "continue it under the new config")
                log.warning("resume=force: continuing %s under a different config (%s)", d, listed)
        if self.resume_from is not None and progress_key:
            wanted = getattr(cfg, progress_key)
            if wanted < self.resume_step:
                raise RunDirError(f"{progress_key}={wanted} is below the {self.resume_step} its checkpoint "
                                  f"{self.resume_from} has already reached; set {progress_key} >= {self.resume_step} "
                                  f"to continue it, or choose a new output_dir to run {progress_key}={wanted} "
                                  "from the start")
        self.existing = True

    # -- start: the first write ---------------------------------------------------------------------------
    def start(self) -> Path:
        """Create (or take over) the directory, record the config and the marker, trim the rows the resumed
        run redoes, open the logs. Returns the directory."""
        if self.started:
            return self.dir
        try:
            if not self._explicit:
                self.dir = _new_directory(self.dir)
            elif not self.existing:
                self.dir.mkdir(parents=True, exist_ok=True)
            self._lock()
            if not self.existing and any(e.name != LOCK for e in self.dir.iterdir()):
                raise RunDirError(f"output_dir={self.dir} was filled by someone else while this run was starting; "
                                  "choose another output_dir")
        except FileExistsError as exc:  # a parent is a file
            raise RunDirError(f"cannot create output_dir={self.dir}: {exc.filename} is a file") from exc
        except OSError as exc:
            raise RunDirError(f"cannot create output_dir={self.dir}: {(exc.strerror or str(exc)).lower()}; "
                              "choose another output_dir") from exc
        values = config_values(self.cfg)
        marker = {"reasonloop": __version__, "command": self.command,
                  "created": self._created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "config_hash": config_hash(values, set(getattr(type(self.cfg), "RESUME_FREE", ())))}
        # the marker first: a run killed right here is still recognised as ours (and has nothing to compare)
        self._write_atomic(MARKER, json.dumps(marker, indent=2))
        tmp = self.dir / "config.yaml.tmp"
        save_config(self.cfg, tmp)
        os.replace(tmp, self.dir / "config.yaml")
        if self.existing:
            counts = checkpoint_rows(self.resume_from) if self.resume_from is not None else None
            for name in ROW_FILES:
                self._trim_rows(name, None if counts is None else counts.get(name, 0), self.resume_step)
        self._metrics = open(self.dir / "metrics.jsonl", "a")
        if self._trackers_wanted:
            purge = None if not self.existing else (self.resume_step + 1 if self.resume_step is not None else 0)
            self._trackers = Trackers(self._trackers_wanted, self.dir, values, marker["created"], purge_step=purge)
        note_run_dir(self.dir)
        self.started = True
        return self.dir

    def _lock(self) -> None:
        """One process writes a run at a time: an exclusive flock on LOCK, held until close() or the process's end
        (so a killed run leaves no stale lock); another process writing the run is a RunDirError."""
        key = str(self.dir.resolve())
        if fcntl is None or key in _HELD:  # held by this process already (a Run of it that stopped unclosed)
            return
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(5):  # `reasonloop runs` probes with a shared lock for a moment: try again briefly
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt < 4:
                    time.sleep(0.05)
                    continue
                holder = _lock_pid(fd)
                os.close(fd)
                raise RunDirError(f"output_dir={self.dir} is being written by another reasonloop process"
                                  f"{'' if holder is None else f' (pid {holder})'}; wait for it to end, or choose "
                                  "another output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD[key] = fd

    def _write_atomic(self, name: str, text: str) -> None:
        tmp = self.dir / f"{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)

    def _trim_rows(self, name: str, count: int | None, step: int | None) -> None:
        """Keep the rows the checkpoint had seen: its first `count` lines, or (a checkpoint from before row
        counts were recorded) the rows of steps <= `step`; none when the run restarts from step 0. The
        resumed run writes the rest again, so no step appears twice. Torn lines are dropped too."""
        path = self.dir / name
        if not path.is_file():
            return
        lines = path.read_bytes().decode(errors="replace").splitlines()
        kept = []
        for i, line in enumerate(lines):
            try:
                row_step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                continue
            if count is not None:
                keep = i < count
            else:
                keep = step is not None and isinstance(row_step, (int, float)) and row_step <= step
            if keep:
                kept.append(line)
        if len(kept) != len(lines):
            log.info("%s: dropped %d rows the resumed run writes again", path, len(lines) - len(kept))
            self._write_atomic(name, "".join(line + "\n" for line in kept))

    # -- writing -------------------------------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        assert self._metrics is not None, "Run.start() first"
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._trackers is not None:  # the same names in every tracker: finite numbers only
            self._trackers.log(step, {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))
                                      and not isinstance(v, bool) and math.isfinite(v)})

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=_plain))
        os.replace(tmp, path)
        return path

    def before_training(self, evaluate: Callable[[], Any], fresh: bool) -> Any:
        """The held-out table before training: `evaluate()`d and recorded in `before.json` when the run starts
        from step 0 (`fresh`), read back from it on a resume, so summary.json keeps it (None if never recorded)."""
        path = self.dir / BEFORE
        if fresh:
            table = evaluate()
            self.write_json(BEFORE, table)
            return table
        return json.loads(path.read_text()) if path.is_file() else None

    def write_jsonl(self, name: str, rows: list[dict], append: bool = False) -> Path:
        path = self.dir / name
        with open(path, "a" if append else "w") as f:
            for r in rows:
                f.write(json.dumps(r, default=_plain) + "\n")
        return path

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._trackers is not None:
            self._trackers.close()
            self._trackers = None
        if self.started and (fd := _HELD.pop(str(self.dir.resolve()), None)) is not None:
            os.close(fd)  # the lock goes with it


def _new_directory(base: Path) -> Path:
    """Create `base`, or `base-2`, `base-3`, ... : mkdir is atomic, so two runs never get the same one."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"could not find a free directory name next to {base}; set output_dir")


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


@contextmanager
def progress(description: str, total: int) -> Iterator[Any]:
    """A rich progress bar; `bar.advance(n)` and `bar.set(text)` update it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        class Bar:
            def advance(self, n: int = 1) -> None:
                prog.advance(task, n)

            def set(self, info: str) -> None:
                prog.update(task, info=info)

        yield Bar()
