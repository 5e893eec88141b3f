"""The supervised loss: negative log-likelihood of completion tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, dict]:
    """sum(-logprobs * mask) / normalizer.

    logprobs, mask: [N, T]. `normalizer` is the number of target tokens in the whole optimizer step,
    so summing micro-batch losses gives the step's token-mean NLL whatever the micro-batch size.
    """
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} disagree")
    nll_sum = -(logprobs * mask).sum()
    return nll_sum / normalizer, {"nll_sum": float(nll_sum.detach()), "tokens": float(mask.sum())}


def smoothed_sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, normalizer: float,
                      label_smoothing: float) -> torch.Tensor:
    """`sft_loss` with label smoothing (Szegedy et al. 2016): each token's target is 1 - eps on the true token plus
    eps spread evenly over the vocabulary, i.e. (1 - eps) x NLL + eps x the mean of -log p over the vocabulary
    (torch's `cross_entropy(label_smoothing=eps)`). logits [N, T, V], targets and mask [N, T]."""
    per_token = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing,
                                reduction="none").view_as(mask)
    return (per_token * mask).sum() / normalizer
