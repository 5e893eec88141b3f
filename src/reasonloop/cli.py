"""`reasonloop <command> [config.yaml ...] [key=value ...]`.

One error boundary (docs/reliability.md): a `UserError` (bad config, YAML, data, model, task,
checkpoint, sandbox argument) or a filesystem failure the user can fix (permission denied, not a
directory, disk full) prints one line naming the input and exits 2; any other exception is an
internal error: one line and exit 1, with the traceback under `--debug` or REASONLOOP_DEBUG=1;
Ctrl-C exits 130 and says where the run can be resumed.

Each command is a recipe module exposing a config dataclass and `run(cfg) -> dict` (the summary).
Commands that take positional arguments of their own (e.g. `sandbox run FILE`) expose `main(argv)`
instead. Modules are imported lazily so `reasonloop --help` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
import traceback
from dataclasses import dataclass

from reasonloop.config import ConfigError, load_config, render_help
from reasonloop.console import quiet_libraries, verbose_requested
from reasonloop.errors import UserError, current_run_dir, note_run_dir
from reasonloop.recipes.presets import PRETRAIN_CODE, PRETRAIN_TOOL, RL_PRESETS


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
    "pretrain_tool": Command("reasonloop.recipes.pretrain", "build tiny-tool: tiny-arith with a few calculator solutions",
                             preset=tuple(PRETRAIN_TOOL)),
    "sft": Command("reasonloop.recipes.sft", "supervised fine-tuning on (prompt, completion) records"),
    "eval": Command("reasonloop.recipes.evaluate", "pass@1 (greedy/sampled), pass@k, maj@k per level"),
    "train": Command("reasonloop.recipes.rl", "online RL (GRPO by default; see the presets below)"),
    **{
        name: Command("reasonloop.recipes.rl", f"online RL preset: train {' '.join(keys) or '(the defaults)'}",
                      preset=tuple(keys))
        for name, keys in RL_PRESETS.items()
    },
    "r1_zero": Command("reasonloop.recipes.r1_zero", "R1-Zero: GRPO from the base on rule rewards, logging length and thought markers"),
    "r1": Command("reasonloop.recipes.r1", "the R1 pipeline as one staged, resumable run (cold start, RL, rejection SFT, RL)"),
    "self_train": Command("reasonloop.recipes.self_train",
                          "generate -> verify -> select -> SFT loops (rejection sampling, RAFT, ReST, STaR, ...)"),
    "reward_model": Command("reasonloop.recipes.reward_modeling",
                            "train a Bradley-Terry reward model (pairs from data= or the verifier-labelled samples)"),
    "prm": Command("reasonloop.recipes.prm", "train a process (or, labels=outcome, outcome) reward model on step labels"),
    "dpo": Command("reasonloop.recipes.dpo", "preference optimisation: offline, online/iterative, self-rewarding"),
    "distill": Command("reasonloop.recipes.distill", "teacher traces -> student (SFT, on-policy KL, TTC loop)"),
    "compare": Command("reasonloop.recipes.compare", "a method against the GRPO baseline at equal samples, tables side by side",
                       config=""),
    "ahro": Command("reasonloop.frameworks.ahro", "GRPO on layered rewards with per-prompt learned weights (docs/frameworks.md)"),
    "capl": Command("reasonloop.frameworks.capl", "answer directly or think, per prompt, by a learned switch (docs/frameworks.md)"),
    "dcot": Command("reasonloop.frameworks.dcot", "GRPO with a bandit-chosen, self-evolving library of reasoning modes (docs/frameworks.md)"),
    "mflo": Command("reasonloop.frameworks.mflo", "GRPO plus a confidence head that continues, backtracks, verifies or stops (docs/frameworks.md)"),
    "mgrcr": Command("reasonloop.frameworks.mgrcr", "GRPO with step, answer and group consistency rewards (docs/frameworks.md)"),
    "search": Command("reasonloop.recipes.search", "test-time search: accuracy against compute per strategy and budget"),
    "serve": Command("reasonloop.recipes.serve", "an OpenAI-compatible /v1/completions server over a model directory"),
    "arre": Command("reasonloop.frameworks.arre", "GRPO on semantics-preserving perturbations + a consistency term; the robustness gap"),
    "crel": Command("reasonloop.frameworks.crel", "GRPO on counterfactual pairs + an intervention-consistency reward"),
    "dspro": Command("reasonloop.frameworks.dspro", "a population of GRPO policies (select and perturb) + a novelty reward"),
    "rctl": Command("reasonloop.frameworks.rctl", "per-task LoRA skill adapters; transfer; a new task with only mixing weights trained"),
    "constitutional": Command("reasonloop.frameworks.constitutional",
                              "Constitutional AI: critique -> revision SFT, AI preference labels -> DPO"),
    "deliberative": Command("reasonloop.frameworks.deliberative",
                            "deliberative alignment: spec-citing traces -> SFT -> RL with a spec judge"),
    "bench": Command("reasonloop.bench", "time the GRPO step (vs=trl: against TRL's GRPOTrainer), the grader or the sandbox"),
    "sandbox": Command("reasonloop.sandbox.cli", "run untrusted code under the sandbox (`sandbox run FILE`)", config=""),
    "runs": Command("reasonloop.recipes.runs", "list the runs under a directory (`runs [DIR] [--clean]`)", config=""),
    "report": Command("reasonloop.recipes.report", "one HTML page of runs: curves, alerts, held-out, samples (`report RUN ...`)", config=""),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {n.ljust(width)}  {c.summary}" for n, c in COMMANDS.items())
    return (
        "usage: reasonloop <command> [config.yaml ...] [key=value ...]\n\n"
        f"commands:\n{rows}\n\n"
        "`reasonloop <command> --help` lists the command's options with their defaults."
    )


# Filesystem failures that are the user's to fix (a path, its permissions, the disk), not bugs.
USER_ERRNOS = {
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a path component is a file, not a directory", errno.EISDIR: "is a directory, not a file",
    errno.EEXIST: "already exists (as a file)", errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long", errno.ELOOP: "too many levels of symbolic links",
}
EXIT_USER, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130


def debug_enabled(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("REASONLOOP_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def filesystem_message(exc: OSError) -> str:
    """'cannot write runs/x/config.yaml: no space left on the device; free space ...' for a user-fixable OSError."""
    path = exc.filename if exc.filename is not None else "a file"
    reason = USER_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
    advice = {
        errno.ENOSPC: "free some space or point output_dir= at another disk",
        errno.EDQUOT: "free some space or point output_dir= at another disk",
        errno.EACCES: "check its permissions or choose another output_dir=",
        errno.EPERM: "check its permissions or choose another output_dir=",
        errno.EROFS: "choose a writable output_dir=",
        errno.ENOTDIR: "a file stands where a directory is needed: choose another path",
        errno.EISDIR: "give a file, not a directory",
        errno.EEXIST: "a file stands where a directory is needed: choose another path",
    }.get(exc.errno or 0, "check the path")
    return f"{path}: {reason}; {advice}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; never lets an exception escape as a traceback (unless --debug asks for it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    verbose = verbose_requested(argv)
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    if not verbose:
        quiet_libraries()
    name = argv[0] if argv else "reasonloop"
    prefix = f"reasonloop {name}" if name in COMMANDS else "reasonloop"
    note_run_dir(None)
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe (`reasonloop --help | head`) surfaces here
        return code
    except SystemExit as exc:  # argparse (`sandbox run` arguments) has printed its usage message
        if isinstance(exc.code, int):
            return exc.code
        if exc.code is not None:  # sys.exit("message"): show the message, as Python would
            print(f"{prefix}: error: {exc.code}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:  # the reader went away: stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except KeyboardInterrupt:
        run_dir = current_run_dir()
        where = (f"; resume with the same command and output_dir={run_dir} (resume=auto continues from its "
                 "latest checkpoint)" if run_dir is not None else "; no run directory was written")
        print(f"\n{prefix}: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as exc:  # bad input the user can fix: a message, not a traceback
        if debug:
            traceback.print_exc()
        kind = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"{prefix}: {kind}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            return _internal(prefix, exc, debug)
        if debug:
            traceback.print_exc()
        print(f"{prefix}: error: {filesystem_message(exc)}", file=sys.stderr)
        return EXIT_USER
    except MemoryError as exc:
        return _internal(prefix, exc, debug, "out of memory; lower batch sizes, max_len or max_new_tokens")
    except Exception as exc:  # a bug: one line, and the traceback on request
        return _internal(prefix, exc, debug)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _internal(prefix: str, exc: BaseException, debug: bool, what: str = "") -> int:
    if debug:
        traceback.print_exc()
        print(f"{prefix}: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
    else:
        print(f"{prefix}: internal error: {type(exc).__name__}: {_one_line(exc)}"
              + (f" ({what})" if what else "")
              + "; run again with --debug (or REASONLOOP_DEBUG=1) for the traceback, and report it", file=sys.stderr)
    return EXIT_INTERNAL


def _main(argv: list[str]) -> int:
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
    if any(a in ("-h", "--help") for a in rest):
        doc = (module.__doc__ or "").strip()
        print(f"usage: reasonloop {name} [config.yaml ...] [key=value ...]\n\n{doc}\n")
        if cmd.preset:
            print(f"preset (applied before your keys): {' '.join(cmd.preset)}\n")
        print("options:")
        print(render_help(cfg_cls))
        return 0
    cfg = load_config(cfg_cls, [*cmd.preset, *rest])  # a ConfigError reaches main(): message, exit 2
    module.run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
