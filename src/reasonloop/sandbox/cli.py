"""`reasonloop sandbox run FILE [--stdin FILE] [--timeout S] ...`: run a program, print a JSON result.

`reasonloop sandbox level` prints the isolation level this machine offers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from reasonloop.errors import UserError
from reasonloop.sandbox.isolation import detect
from reasonloop.sandbox.records import Limits
from reasonloop.sandbox.runner import IsolationError, Sandbox

LANGUAGES = {".py": "python", ".c": "c"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reasonloop sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run FILE in the sandbox and print the result as JSON")
    run.add_argument("file", type=Path)
    run.add_argument("--stdin", type=Path, help="file fed to the program's standard input")
    run.add_argument("--language", choices=sorted(set(LANGUAGES.values())),
                     help="default: from the file extension (.py, .c)")
    defaults = Limits()
    run.add_argument("--timeout", type=float, default=defaults.wall_time_s, help="wall-clock seconds")
    run.add_argument("--cpu", type=int, default=defaults.cpu_time_s, help="CPU seconds")
    run.add_argument("--memory-mb", type=int, default=defaults.memory_mb)
    run.add_argument("--allow-unisolated", action="store_true",
                     help="run with rlimits only when namespaces are unavailable")
    sub.add_parser("level", help="print the isolation level available here")
    return parser


class SandboxArgumentError(UserError):
    """A `sandbox run` argument that cannot be used: a missing or non-text file, a limit that is not > 0."""


def read_text_arg(path: Path, what: str) -> str:
    """The UTF-8 text of a FILE / --stdin argument, or a SandboxArgumentError saying what is wrong."""
    if not path.exists():
        raise SandboxArgumentError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise SandboxArgumentError(f"{what} {str(path)!r} is a directory; give a file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SandboxArgumentError(f"{what} {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise SandboxArgumentError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None


def check_limits(args: argparse.Namespace) -> Limits:
    for flag, value in (("--timeout", args.timeout), ("--cpu", args.cpu), ("--memory-mb", args.memory_mb)):
        if not (math.isfinite(value) and value > 0):
            raise SandboxArgumentError(f"{flag} {value}: must be a finite number > 0")
    return Limits(wall_time_s=args.timeout, cpu_time_s=args.cpu, memory_mb=args.memory_mb)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action == "level":
        print(json.dumps({"level": detect().level, "detail": detect().describe()}))
        return 0
    limits = check_limits(args)
    source = read_text_arg(args.file, "FILE")
    stdin = read_text_arg(args.stdin, "--stdin") if args.stdin else ""
    language = args.language or LANGUAGES.get(args.file.suffix, "python")
    try:
        sandbox = Sandbox(limits, allow_unisolated=args.allow_unisolated)
    except IsolationError as exc:
        print(json.dumps({"status": "sandbox_error", "error": str(exc)}))
        return 2
    result = sandbox.run(source, stdin, language)
    print(result.to_json())
    return 0 if result.ok else 1
