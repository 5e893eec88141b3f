"""Sharded checkpoints of torch.distributed runs: torch.distributed.checkpoint (DCP) inside reasonloop's layout.

A checkpoint directory `step-N/` holds `dcp/` (model and optimizer state, each rank writing its own
shards, with the critic and PRIME's implicit PRM and its optimizer; DCP reshards on load, so a
checkpoint saved by 2 ranks resumes on 1, or on 4),
`trainer.pt` (scheduler state, every rank's RNG states, extra schedulers), `state.json`, the run's `config.yaml` and
`manifest.json`, written through train/checkpoint.py's `write_checkpoint_dir`: a `.tmp` sibling renamed
into place, then `latest` swapped, so a crash mid-write leaves the previous checkpoint intact.

Rank 0 creates the `.tmp` directory; a barrier lets the other ranks write their shards into it;
rank 0 then writes the rest and renames. A rank that resumes at a world size the checkpoint did not
have (rank 2 of 4 from a 2-rank checkpoint) keeps its freshly seeded sampler: the weights, optimizer,
schedule and data position continue exactly, the random stream of that rank does not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from reasonloop.train.checkpoint import list_checkpoints, reading, rng_state, set_rng_state, write_checkpoint_dir

SHARDS = "dcp"


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           modules: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the DCP state, the remaining `modules` for trainer.pt). `modules` (the trainer's extra trained parts) by name:
    a module whose parameters the main optimizer holds (the critic) joins the policy's state under its name;
    a module NAME with its own NAME_optimizer (PRIME's implicit PRM) gets its own model and optimizer state;
    anything else with a state_dict (a scheduler) goes to trainer.pt."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    state: dict[str, Any] = {}
    for module, optim, key, optim_key in _roots(model, optimizer, modules):
        state[key], state[optim_key] = get_state_dict(module, optim)
    covered = {k for k, m in (modules or {}).items() if isinstance(m, torch.nn.Module)} | set(state)
    return state, {k: m for k, m in (modules or {}).items() if k not in covered}


class _Joint(torch.nn.Module):
    """The policy and the modules its optimizer also trains, as one module tree for DCP's state dicts
    (parameter names `policy.*`, `<name>.*`)."""

    def __init__(self, policy: torch.nn.Module, others: dict[str, torch.nn.Module]):
        super().__init__()
        self.policy = policy
        for name, module in others.items():
            self.add_module(name, module)


def _roots(model, optimizer, modules: dict[str, Any] | None) -> list[tuple]:
    """[(module, optimizer, state key, optimizer key)]: the policy (with the modules its optimizer trains)
    and each module NAME with its own NAME_optimizer."""
    modules = modules or {}
    own = sorted(k for k, m in modules.items() if isinstance(m, torch.nn.Module) and f"{k}_optimizer" in modules)
    joint = {k: m for k, m in modules.items() if isinstance(m, torch.nn.Module) and k not in own}
    return [(model if not joint else _Joint(model, joint), optimizer, "model", "optim"),
            *[(modules[k], modules[f"{k}_optimizer"], k, f"{k}_optimizer") for k in own]]


def save_sharded_checkpoint(placement: Any, run_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                            generators: dict | None = None, modules: dict | None = None, keep: int = 2) -> Path:
    """Every rank calls this (collective). Returns the checkpoint path (on every rank)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    rngs = [None] * placement.world_size
    dist.all_gather_object(rngs, rng_state(generators))
    name = f"step-{step:06d}"
    tmp = Path(run_dir) / "checkpoints" / f"{name}.tmp"
    sharded, small = _state(model, optimizer, modules)  # collective under FSDP: every rank, before the barrier

    def fill(directory: Path) -> None:  # rank 0, inside write_checkpoint_dir
        dist.barrier()  # the .tmp directory exists: the other ranks write their shards
        dcp.save(sharded, checkpoint_id=str(directory / SHARDS))
        torch.save({"scheduler": scheduler.state_dict(), "rng": rngs, "world_size": placement.world_size,
                    "modules": {k: m.state_dict() for k, m in small.items()}}, directory / "trainer.pt")
        (directory / "state.json").write_text(json.dumps({"step": step, **state}))

    if placement.is_main:
        final = write_checkpoint_dir(run_dir, name, fill)
        older = [p for s, p in list_checkpoints(run_dir) if p.name.startswith("step-") and s < step]
        for old in older[: max(len(older) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
    else:
        dist.barrier()
        dcp.save(sharded, checkpoint_id=str(tmp / SHARDS))
        final = Path(run_dir) / "checkpoints" / name
    dist.barrier()  # nobody goes on before `latest` names the new checkpoint
    return final


def load_sharded_checkpoint(ckpt: Path, model, optimizer, scheduler, generators: dict | None = None,
                            modules: dict | None = None, rank: int = 0) -> dict[str, Any]:
    """Restore a DCP checkpoint in place at this process's world size (1 without a process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    with reading(ckpt):
        target, small = _state(model, optimizer, modules)
        dcp.load(target, checkpoint_id=str(ckpt / SHARDS))
        for module, optim, key, optim_key in _roots(model, optimizer, modules):
            set_state_dict(module, optim, model_state_dict=target[key], optim_state_dict=target[optim_key])
        trainer = torch.load(ckpt / "trainer.pt", weights_only=False)
        scheduler.load_state_dict(trainer["scheduler"])
        for k, m in small.items():
            m.load_state_dict(trainer["modules"][k])
        rngs = trainer["rng"]
        if rank < len(rngs):
            set_rng_state(rngs[rank], generators)
        return json.loads((ckpt / "state.json").read_text())
