"""The one user-error type the command line turns into a message, and the run directory of this process.

Every failure a user can fix (a bad config value, a broken YAML file, a model path that does not
exist, an empty data file, a bad `sandbox run` argument, ...) raises a subclass of `UserError`;
`reasonloop.cli` prints its message and exits 2 instead of showing a traceback. Anything else is an
internal error (exit 1; `--debug` or REASONLOOP_DEBUG=1 shows the traceback).

`note_run_dir(path)` records the run directory a command is writing, so that an interrupt (Ctrl-C)
can say where the run can be resumed; `current_run_dir()` reads it back.
"""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """Bad input the user can fix; the message names the input and what to do. Exit code 2."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type's name."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


_run_dir: Path | None = None


def note_run_dir(path: str | Path | None) -> None:
    """Record the run directory this process writes (None forgets it); read by the Ctrl-C message."""
    global _run_dir
    _run_dir = Path(path) if path is not None else None


def current_run_dir() -> Path | None:
    """The run directory recorded by `note_run_dir`, or None when no run directory was created."""
    return _run_dir
