"""Atomic, resumable checkpoints: model (safetensors), optimizer, scheduler, RNG states, loop state.

Layout: `<run>/checkpoints/step-000123/` holding `model/` (save_pretrained), `trainer.pt`
(optimizer, scheduler, RNG states) and `state.json` (step, data position, controller states).
A checkpoint is written to a `.tmp` sibling and renamed into place, then `latest` is replaced
atomically, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


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
    """`modules` are extra trained parts (e.g. a value head) saved beside the optimizer state."""
    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": rng_state(generators), "modules": {k: m.state_dict() for k, m in (modules or {}).items()}},
            tmp / "trainer.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}))

    final = write_checkpoint_dir(run_dir, f"step-{step:06d}", fill)
    for old in sorted(p for p in final.parent.glob("step-*") if p.suffix != ".tmp")[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_checkpoint_dir(run_dir: str | Path, name: str, fill: Callable[[Path], None]) -> Path:
    """`fill` a `<run>/checkpoints/<name>.tmp` directory, rename it into place, then swap `latest`
    to it; a run killed at any point leaves the previous checkpoint and pointer intact."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / name, root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = root / "latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "latest")
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


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
    trainer = torch.load(path / "trainer.pt", weights_only=False)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"], generators)
    for k, m in (modules or {}).items():
        m.load_state_dict(trainer["modules"][k])
    return json.loads((path / "state.json").read_text())


def load_model_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Load the safetensors weights `save_pretrained` wrote into `model` in place (a peft model: its
    adapter). Tied embeddings are saved once; any other missing or unexpected key is an error."""
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if hasattr(model, "peft_config"):  # a peft model saves only its adapter weights
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"{model_dir} does not match the model: missing={missing} unexpected={unexpected}")
