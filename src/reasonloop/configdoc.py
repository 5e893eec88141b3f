"""Generate docs/config.md, the config reference, from the recipe config dataclasses.

    python -m reasonloop.configdoc > docs/config.md

A test regenerates it and fails when the committed file is stale.
"""

from __future__ import annotations

import importlib

from reasonloop.cli import COMMANDS
from reasonloop.config import render_markdown


def render() -> str:
    out = [
        "# Config reference",
        "",
        "Generated from the config dataclasses by `python -m reasonloop.configdoc`; do not edit by hand.",
        "Every key can be set in a YAML file or as `key=value` on the command line (dotted for nested blocks).",
        "",
    ]
    seen: set[str] = set()
    for name, cmd in COMMANDS.items():
        if cmd.module in seen:
            continue
        seen.add(cmd.module)
        module = importlib.import_module(cmd.module)
        config = getattr(module, cmd.config or "Config", None)  # argv commands may still have a Config
        if config is None:
            continue
        aliases = [n for n, c in COMMANDS.items() if c.module == cmd.module and n != name]
        out.append(f"## `reasonloop {name}`" + (f" (also: {', '.join(aliases)})" if aliases else ""))
        out.append("")
        out.append(render_markdown(config))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
