"""Sharded checkpoints of torch.distributed runs: torch.distributed.checkpoint (DCP) inside reasonloop's layout.

A checkpoint directory `step-N/` holds `dcp/` (model and optimizer state, each rank writing its own
shards; DCP reshards on load, so a checkpoint saved by 2 ranks resumes on 1, or on 4),
`trainer.pt` (scheduler state and every rank's RNG states), `state.json`, the run's `config.yaml` and
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


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_sharded_checkpoint(placement: Any, run_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                            generators: dict | None = None, modules: dict | None = None, keep: int = 2) -> Path:
    """Every rank calls this (collective). Returns the checkpoint path (on every rank)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    if modules:
        raise ValueError(f"sharded checkpoints do not hold extra modules ({sorted(modules)})")
    rngs = [None] * placement.world_size
    dist.all_gather_object(rngs, rng_state(generators))
    name = f"step-{step:06d}"
    tmp = Path(run_dir) / "checkpoints" / f"{name}.tmp"
    sharded = _state(model, optimizer)  # collective under FSDP: every rank, before the barrier

    def fill(directory: Path) -> None:  # rank 0, inside write_checkpoint_dir
        dist.barrier()  # the .tmp directory exists: the other ranks write their shards
        dcp.save(sharded, checkpoint_id=str(directory / SHARDS))
        torch.save({"scheduler": scheduler.state_dict(), "rng": rngs, "world_size": placement.world_size},
                   directory / "trainer.pt")
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

    if modules:
        raise ValueError(f"sharded checkpoints do not hold extra modules ({sorted(modules)})")
    with reading(ckpt):
        target = _state(model, optimizer)
        dcp.load(target, checkpoint_id=str(ckpt / SHARDS))
        set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
        trainer = torch.load(ckpt / "trainer.pt", weights_only=False)
        scheduler.load_state_dict(trainer["scheduler"])
        rngs = trainer["rng"]
        if rank < len(rngs):
            set_rng_state(rngs[rank], generators)
        return json.loads((ckpt / "state.json").read_text())
