"""Atomic, verified, resumable checkpoints: model (safetensors), optimizer, scheduler, RNG states, loop state.

Layout: `<run>/checkpoints/step-000123/` holding `model/` (save_pretrained), `trainer.pt`
(optimizer, scheduler, RNG states), `state.json` (step, data position, controller states), a copy
of the run's `config.yaml` (what `resume=auto` compares the new config with) and `manifest.json`
(size and sha256 of every other file). A checkpoint is written to a `.tmp` sibling and renamed into
place, then `latest` is replaced atomically, so a run killed mid-write leaves the previous checkpoint
intact; a write that fails (a full disk) removes the partial copy and raises `CheckpointError`.

Only reasonloop's own checkpoints (`step-N`, `iter-N` directories) are ever read, and only `step-N`
ones pruned, by step number: never one newer than the checkpoint just written.
On resume, `find_resume_checkpoint` verifies the one `latest` names against its manifest; a missing
or damaged one falls back to the newest intact older checkpoint, with a warning, and a run whose
checkpoints are all damaged is an error, never a silent restart from step 0 (docs/run-directories.md).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from reasonloop.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^(step|iter)-(\d+)$")
MANIFEST = "manifest.json"
ROW_FILES = ("metrics.jsonl", "samples.jsonl")  # the run's row logs; a resume trims them to the checkpoint


class CheckpointError(UserError):
    """A checkpoint that cannot be written (full disk) or read (missing, truncated, corrupt)."""


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {k: g.get_state() for k, g in (generators or {}).items()}
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (generators or {}).items():
        g.set_state(state["generators"][k])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    generators: dict[str, torch.Generator] | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
    keep: int = 2,
) -> Path:
    """`modules` are extra trained parts (e.g. a value head) saved beside the optimizer state. Keeps the
    new checkpoint and the `keep - 1` newest `step-N` checkpoints before it; later ones are left alone."""
    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng_state(generators), "modules": {k: m.state_dict() for k, m in (modules or {}).items()}},
            tmp / "trainer.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}))

    final = write_checkpoint_dir(run_dir, f"step-{step:06d}", fill)
    older = [p for s, p in list_checkpoints(run_dir) if p.name.startswith("step-") and s < step]
    for old in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint_dir(run_dir: str | Path, name: str, fill: Callable[[Path], None]) -> Path:
    """`fill` a `<run>/checkpoints/<name>.tmp` directory, add the run's config and a manifest, rename it
    into place, then swap `latest` to it; a run killed at any point leaves the previous checkpoint and
    pointer intact. A failed write (no space left, permissions) removes the partial copy and raises
    `CheckpointError`, the previous checkpoint and pointer untouched."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / name, root / f"{name}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        fill(tmp)
        config = Path(run_dir) / "config.yaml"
        if config.is_file():
            shutil.copyfile(config, tmp / "config.yaml")
        write_manifest(tmp, rows={f: _count_lines(Path(run_dir) / f) for f in ROW_FILES})
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_write_failure(exc):
            raise
        raise CheckpointError(f"could not write checkpoint {final}: {_reason(exc)}; {_previous(root)} "
                              "(free some space or choose another output_dir, then resume)") from exc
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = root / "latest.tmp"
    try:
        latest_tmp.write_text(final.name)
        os.replace(latest_tmp, root / "latest")
    except OSError as exc:
        latest_tmp.unlink(missing_ok=True)
        raise CheckpointError(f"wrote checkpoint {final} but could not point {root / 'latest'} at it: "
                              f"{_reason(exc)}; {_previous(root)}") from exc
    return final


def _is_write_failure(exc: Exception) -> bool:
    """An OSError, or torch's stream writer reporting a failed write (it raises RuntimeError)."""
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "writ" in str(exc).lower())


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split())[:300]


def _previous(root: Path) -> str:
    pointer = root / "latest"
    if pointer.is_file():
        return f"the previous checkpoint ({pointer.read_text().strip()}) is intact"
    return "no earlier checkpoint exists"


def write_manifest(ckpt: Path, rows: dict[str, int] | None = None) -> None:
    """Record the size and sha256 of every file under `ckpt` in `ckpt/manifest.json` (written last), and
    `rows`: how many lines each of the run's row logs held when the checkpoint was taken."""
    files = {str(p.relative_to(ckpt)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(ckpt.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (ckpt / MANIFEST).write_text(json.dumps({"files": files, "rows": rows or {}}, indent=1))


def checkpoint_rows(ckpt: Path) -> dict[str, int] | None:
    """Lines of each row log (metrics.jsonl, samples.jsonl) at the checkpoint; None for older checkpoints."""
    try:
        rows = json.loads((ckpt / MANIFEST).read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rows if isinstance(rows, dict) else None


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_step(path: Path) -> int | None:
    """The step (or iteration) number of a reasonloop checkpoint directory name; None for anything else."""
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(2)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every reasonloop checkpoint directory of the run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is intact, else what is wrong with it ('is missing', 'has a truncated ...')."""
    if not path.is_dir():
        return "is missing"
    manifest = path / MANIFEST
    if not manifest.is_file():  # written by an earlier reasonloop: check what can be checked
        try:
            json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            return "has no readable state.json"
        return None if (path / "model").is_dir() else "has no model/ directory"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"has an unreadable {MANIFEST}"
    for rel, expected in files.items():
        f = path / rel
        if not f.is_file():
            return f"is missing {rel}"
        size = f.stat().st_size
        if size != expected["size"]:
            return f"has a truncated {rel} ({size} of {expected['size']} bytes)"
        if _sha256(f) != expected["sha256"]:
            return f"has a corrupt {rel} (its sha256 does not match the manifest)"
    return None


def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The checkpoint a resumed run continues from, and warnings about damaged ones it passed over.

    The one `checkpoints/latest` names, if intact; otherwise the newest intact checkpoint older than it,
    with a warning. None when the run has no checkpoints; `CheckpointError` when it has some but none is
    intact (a run never silently restarts from step 0)."""
    root = Path(run_dir) / "checkpoints"
    found = list_checkpoints(run_dir)
    pointer = root / "latest"
    named: Path | None = None
    if pointer.is_file():
        try:
            named = root / pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
    if named is None and not found:
        return None, []
    warnings: list[str] = []
    if named is not None:
        named_step = checkpoint_step(named)
        problem = "is not a checkpoint name" if named_step is None else verify_checkpoint(named)
        if problem is None:
            return named, []
        warnings.append(f"checkpoint {named} ({pointer} names it) {problem}")
        candidates = [p for s, p in found if named_step is None or s < named_step]
    else:
        warnings.append(f"{pointer} is missing or unreadable")
        candidates = [p for _, p in found]
    for path in reversed(candidates):
        problem = verify_checkpoint(path)
        if problem is None:
            warnings.append(f"resuming from {path.name}, the newest intact checkpoint before it")
            return path, warnings
        warnings.append(f"checkpoint {path} {problem}")
    raise CheckpointError(f"{run_dir} has checkpoints but none is intact: {'; '.join(warnings)}. Nothing to resume "
                          "from: move the damaged checkpoints away to start over, or choose another output_dir")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` points at, if it exists (unverified: for rollbacks within a running run)."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


@contextmanager
def reading(ckpt: Path) -> Iterator[None]:
    """Turn any failure to read `ckpt`'s files into a `CheckpointError` naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {ckpt} cannot be read ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:300]}); move it away to resume from an earlier one") from exc


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generators: dict[str, torch.Generator] | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Restore everything in place; returns the loop state (step, data position, controllers...)."""
    load_model_weights(model, path / "model")
    with reading(path):
        trainer = torch.load(path / "trainer.pt", weights_only=False)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        set_rng_state(trainer["rng"], generators)
        for k, m in (modules or {}).items():
            m.load_state_dict(trainer["modules"][k])
        return json.loads((path / "state.json").read_text())


def load_model_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Load the safetensors weights `save_pretrained` wrote into `model` in place (a peft model: its
    adapter). Tied embeddings are saved once; any other missing or unexpected key is a CheckpointError."""
    from safetensors.torch import load_file

    weights = {}
    with reading(model_dir.parent):
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"checkpoint {model_dir.parent} has no weights in {model_dir}")
        for f in files:
            weights.update(load_file(str(f)))
    if hasattr(model, "peft_config"):  # a peft model saves only its adapter weights
        from peft import set_peft_model_state_dict

        with reading(model_dir.parent):
            set_peft_model_state_dict(model, weights)
        return
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{model_dir} does not match the model: {' '.join(str(exc).split())[:300]}") from exc
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{model_dir} does not match the model: missing={missing} unexpected={unexpected}")
