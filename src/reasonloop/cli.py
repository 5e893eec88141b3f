"""`reasonloop <command> [config.yaml ...] [key=value ...]`.

Each command is a recipe module exposing a config dataclass and `run(cfg) -> dict` (the summary).
Commands that take positional arguments of their own (e.g. `sandbox run FILE`) expose `main(argv)`
instead. Modules are imported lazily so `reasonloop --help` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass

from reasonloop.config import ConfigError, load_config, render_help
from reasonloop.recipes.presets import PRETRAIN_CODE, RL_PRESETS


@dataclass(frozen=True)
class Command:
    module: str
    summary: str
    config: str = "Config"  # attribute name of the config dataclass in `module`; "" for main(argv)
    preset: tuple[str, ...] = ()  # key=value pairs applied before the user's own


COMMANDS: dict[str, Command] = {
    "pretrain": Command("reasonloop.recipes.pretrain", "rebuild the embedded tiny model (tiny-arith) from scratch"),
    "pretrain_code": Command("reasonloop.recipes.pretrain", "rebuild tiny-code: tiny-arith trained on code_arith programs",
                             preset=tuple(PRETRAIN_CODE)),
    "sft": Command("reasonloop.recipes.sft", "supervised fine-tuning on (prompt, completion) records"),
    "eval": Command("reasonloop.recipes.evaluate", "pass@1 (greedy/sampled), pass@k, maj@k per level"),
    "train": Command("reasonloop.recipes.rl", "online RL (GRPO by default; see the presets below)"),
    **{
        name: Command("reasonloop.recipes.rl", f"online RL preset: train {' '.join(keys) or '(the defaults)'}",
                      preset=tuple(keys))
        for name, keys in RL_PRESETS.items()
    },
    "self_train": Command("reasonloop.recipes.self_train",
                          "generate -> verify -> select -> SFT loops (rejection sampling, RAFT, ReST, STaR, ...)"),
    "reward_model": Command("reasonloop.recipes.reward_modeling",
                            "train a Bradley-Terry reward model (pairs from data= or the verifier-labelled samples)"),
    "dpo": Command("reasonloop.recipes.dpo", "preference optimisation: offline, online/iterative, self-rewarding"),
    "distill": Command("reasonloop.recipes.distill", "teacher traces -> student (SFT, on-policy KL, TTC loop)"),
    "bench": Command("reasonloop.bench", "time the GRPO step (vs=trl: against TRL's GRPOTrainer), the grader or the sandbox"),
    "sandbox": Command("reasonloop.sandbox.cli", "run untrusted code under the sandbox (`sandbox run FILE`)", config=""),
}


def _user_errors() -> tuple[type[Exception], ...]:
    from reasonloop.data.io import DataError
    from reasonloop.tasks import TaskError
    from reasonloop.sandbox.runner import IsolationError

    return ConfigError, TaskError, DataError, IsolationError


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {n.ljust(width)}  {c.summary}" for n, c in COMMANDS.items())
    return (
        "usage: reasonloop <command> [config.yaml ...] [key=value ...]\n\n"
        f"commands:\n{rows}\n\n"
        "`reasonloop <command> --help` lists the command's options with their defaults."
    )


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe (`reasonloop --help | head`) surfaces here
        return code
    except BrokenPipeError:  # the reader went away: stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        print(f"reasonloop: unknown command {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
              file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    module = importlib.import_module(cmd.module)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not cmd.config:
        return int(module.main(rest) or 0)
    cfg_cls = getattr(module, cmd.config)
    user_errors = _user_errors()
    if any(a in ("-h", "--help") for a in rest):
        doc = (module.__doc__ or "").strip()
        print(f"usage: reasonloop {name} [config.yaml ...] [key=value ...]\n\n{doc}\n")
        if cmd.preset:
            print(f"preset (applied before your keys): {' '.join(cmd.preset)}\n")
        print("options:")
        print(render_help(cfg_cls))
        return 0
    try:
        cfg = load_config(cfg_cls, [*cmd.preset, *rest])
    except ConfigError as exc:
        print(f"reasonloop {name}: config error: {exc}", file=sys.stderr)
        return 2
    try:
        module.run(cfg)
    except user_errors as exc:  # bad input the user can fix: a message, not a traceback
        print(f"reasonloop {name}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
