#!/usr/bin/env bash
# One entry point for a fresh machine: installs what reasonloop needs into ./.venv on first use
# (the CPU build of torch pinned for this machine; the package itself accepts any torch >= 2.2),
# then runs the command.
#
#   ./dev.sh train [key=value ...]   the main job: GRPO on the embedded tiny model, before/after accuracy
#   ./dev.sh test [pytest args]      the default test suite (fast CPU tests)
#   ./dev.sh <command> [...]         any `reasonloop` command (eval, sft, pretrain, bench, ...)
set -euo pipefail
cd "$(dirname "$0")"

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "dev.sh: installing into .venv (first run only)..." >&2
  # -qq: errors only (pip warns once per missing package on indexes configured for this machine)
  python3 -m venv .venv
  .venv/bin/pip install -qq --upgrade pip
  .venv/bin/pip install -qq "torch==2.13.0"
  .venv/bin/pip install -qq -e ".[dev]"
  touch "$stamp"
fi
# The code sandbox uses bubblewrap namespaces when present; install it where we may.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
    || echo "dev.sh: could not install bubblewrap; the sandbox falls back to rlimits only" >&2
fi
# The report's browser test (tests/recipes/test_report.py) drives headless Chromium: for `test`, install it
# where we may (a minute, once; `train` never waits for it).
if [ "${1:-train}" = test ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "dev.sh: could not install chromium; the report's browser test will be skipped" >&2
fi

cmd=${1:-train}
shift || true
case "$cmd" in
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  *) exec .venv/bin/reasonloop "$cmd" "$@" ;;
esac
