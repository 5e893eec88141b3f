"""AdamW with linear warmup then cosine decay; the shared optimiser block of every recipe config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from reasonloop.config import require


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warmup length in optimizer steps."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to lr * min_lr_ratio at the last step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""

    def __post_init__(self):
        require(self.lr > 0, "optim.lr must be > 0")
        require(len(self.betas) == 2, "optim.betas must have two values")
        require(all(0 <= b < 1 for b in self.betas), f"optim.betas={list(self.betas)}: each must be in [0, 1)")
        require(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        require(self.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0 (0 disables clipping)")
        require(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]")


def build_optimizer(params, cfg: OptimConfig, total_steps: int):
    trainable = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    warmup, floor = cfg.warmup_steps, cfg.min_lr_ratio

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    return opt, sched


def clip_and_step(model: torch.nn.Module, optimizer, scheduler, max_grad_norm: float) -> tuple[float, bool]:
    """Clip, then step unless the gradient is non-finite. Returns (grad norm, stepped)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    finite = bool(torch.isfinite(norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return float(norm), finite
