"""The `distributed.*` block of the RL config: where the same step runs (one process, torchrun ranks, Ray actors)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasonloop.config import require, require_choice

BACKENDS = ("auto", "none", "torch", "ray")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class RayConfig:
    """Placement of the Ray actor-learner (`distributed.backend=ray`)."""

    address: str = ""
    """Ray cluster to join (`ray.init(address=...)`); empty starts a local Ray instance."""
    num_cpus: int = 0
    """CPUs of the local Ray instance (0: Ray's choice); ignored when joining a cluster."""
    mode: str = "sync"
    """sync: generate step t with the weights of step t-1 (the single-process numbers); async: generation of
    step t+1 overlaps training of step t, samples up to `max_staleness` updates old, importance-corrected."""
    max_staleness: int = 1
    """async: the most learner updates a batch's sampling weights may lag behind the learner (>= 1)."""
    rollout_workers: int = 1
    """Rollout actors, each with its own RolloutEngine; a step's prompts are split among them."""
    reward_workers: int = 1
    """Reward/verifier actors; a step's completions are split among them."""
    cpus_per_worker: float = 0.5
    """CPUs Ray reserves for each rollout and reward actor (the defaults fit a 2-core laptop: 1 + 0.5 + 0.5)."""
    learner_cpus: float = 1.0
    """CPUs Ray reserves for each learner actor."""
    learners: int = 1
    """Learner ranks: N learner actors form one torch.distributed group (gloo on CPU, nccl on GPU) and train with
    `distributed.strategy` (ddp/fsdp) exactly as N torchrun ranks do, each with its own rollout and reward workers
    (in async mode each rank looks ahead on its own shard). 1: one learner process."""
    learner_gpus: float = 0.0
    """GPUs Ray reserves for each learner actor (0 on CPU)."""
    max_restarts: int = 3
    """How often a dead worker is replaced before the run gives up."""

    def __post_init__(self):
        require_choice("distributed.ray.mode", self.mode, ["sync", "async"])
        require(self.max_staleness >= 1, "distributed.ray.max_staleness must be >= 1")
        require(self.rollout_workers >= 1 and self.reward_workers >= 1,
                "distributed.ray.rollout_workers and reward_workers must be >= 1")
        require(self.cpus_per_worker >= 0 and self.learner_cpus >= 0, "distributed.ray CPU reservations must be >= 0")
        require(self.num_cpus >= 0 and self.max_restarts >= 0, "distributed.ray.num_cpus and max_restarts must be >= 0")
        require(self.learners >= 1 and self.learner_gpus >= 0, "distributed.ray.learners must be >= 1, learner_gpus >= 0")


@dataclass
class DistributedConfig:
    """Scale-out: the same training step placed on several processes (docs/scale.md)."""

    backend: str = "auto"
    """auto: torch.distributed when launched by torchrun (WORLD_SIZE set), else one process | none | torch |
    ray (the Ray actor-learner)."""
    strategy: str = "ddp"
    """torch.distributed data parallelism: ddp (replicated weights, all-reduced gradients) | fsdp (FSDP2
    `fully_shard`: parameters, gradients and optimizer state sharded across ranks)."""
    cpu_offload: bool = False
    """fsdp: keep the sharded parameters, gradients and optimizer state in CPU memory (`CPUOffloadPolicy`)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray actor-learner's placement."""

    def __post_init__(self):
        require_choice("distributed.backend", self.backend, list(BACKENDS))
        require_choice("distributed.strategy", self.strategy, list(STRATEGIES))
        require(not self.cpu_offload or self.strategy == "fsdp",
                "distributed.cpu_offload needs distributed.strategy=fsdp")


@dataclass
class MemoryConfig:
    """Memory savers for larger policies; each keeps the step's maths (docs/scale.md has the supported combinations)."""

    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (HF `gradient_checkpointing_enable`,
    non-reentrant): less memory, ~30% more compute, the same gradients."""
    precision: str = "fp32"
    """fp32 | bf16: bf16 autocast of the forward passes with fp32 master weights, gradients and optimizer state
    (under distributed.strategy=fsdp: FSDP2's MixedPrecisionPolicy, bf16 parameters in compute, fp32 reduction)."""

    def __post_init__(self):
        require_choice("memory.precision", self.precision, ["fp32", "bf16"])
