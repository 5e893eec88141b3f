"""`reasonloop sandbox run FILE [--stdin FILE] [--timeout S] ...`: run a program, print a JSON result.

`reasonloop sandbox level` prints the isolation level this machine offers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action == "level":
        print(json.dumps({"level": detect().level, "detail": detect().describe()}))
        return 0
    limits = Limits(wall_time_s=args.timeout, cpu_time_s=args.cpu, memory_mb=args.memory_mb)
    language = args.language or LANGUAGES.get(args.file.suffix, "python")
    try:
        sandbox = Sandbox(limits, allow_unisolated=args.allow_unisolated)
    except IsolationError as exc:
        print(json.dumps({"status": "sandbox_error", "error": str(exc)}))
        return 2
    stdin = args.stdin.read_text() if args.stdin else ""
    result = sandbox.run(args.file.read_text(), stdin, language)
    print(result.to_json())
    return 0 if result.ok else 1
