"""Adapters that place the same RL step on engines (docs/scale.md): torchrun ranks with DDP or FSDP2, and
the Ray actor-learner. Never a fork of the step: `recipes/rl.py`'s Trainer consults a placement at a few
hooks (prompt shard, global normaliser, gradient sync, rank-0 writes, sharded checkpoints)."""

from reasonloop.distributed.config import DistributedConfig, MemoryConfig, RayConfig
from reasonloop.distributed.placement import LocalPlacement, TorchPlacement, make_placement

__all__ = ["DistributedConfig", "MemoryConfig", "RayConfig", "LocalPlacement", "TorchPlacement", "make_placement"]
