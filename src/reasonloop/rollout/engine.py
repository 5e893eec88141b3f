"""The rollout seam: the trainer only ever sees this interface (DESIGN.md, "Seams")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from reasonloop.config import require
from reasonloop.data.records import RolloutBatch


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1 disables."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's; 0 disables."""
    max_new_tokens: int = 64
    """Completion length limit in tokens; longer completions are truncated (finish reason 'length')."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings (generation also stops at EOS); the stop string is kept in the text."""

    def __post_init__(self):
        require(self.temperature >= 0, "sampling.temperature must be >= 0")
        require(self.top_k >= 0, "sampling.top_k must be >= 0")
        require(0 < self.top_p <= 1, "sampling.top_p must be in (0, 1]")
        require(0 <= self.min_p < 1, "sampling.min_p must be in [0, 1)")
        require(self.max_new_tokens > 0, "sampling.max_new_tokens must be > 0")
        require(all(isinstance(s, str) and s for s in self.stop),
                "sampling.stop has an empty string, which would end every completion after one token; remove it")


@dataclass
class RolloutConfig:
    """Which engine generates the rollouts, and its switches (the trainer never sees which one it has)."""

    engine: str = "torch"
    """torch: the in-process sampler (shares the policy's weights)."""
    static_cache: bool = True
    """torch engine: preallocated K/V cache and fused projections for Llama-family models (false: transformers'
    DynamicCache path; same samples)."""
    fused_decode: bool = True
    """torch engine: the compiled CPU decode step where it builds (false, or REASONLOOP_FUSED_DECODE=0: torch ops)."""

    def __post_init__(self):
        require(self.engine in ENGINES, f"rollout.engine={self.engine!r} is not one of {list(ENGINES)}")


ENGINES = ("torch",)


def build_engine(cfg: RolloutConfig, model: torch.nn.Module, tokenizer) -> "RolloutEngine":
    """The engine `cfg` names, sampling from `model`."""
    from reasonloop.rollout.sampler import TorchSampler

    return TorchSampler(model, tokenizer, static_cache=cfg.static_cache, fused_decode=cfg.fused_decode)


class RolloutEngine(Protocol):
    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, generator: torch.Generator | None = None
    ) -> RolloutBatch:
        """n samples for each prompt, prompt-major; prompts are already rendered (chat template applied)."""
        ...

    def update_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...
