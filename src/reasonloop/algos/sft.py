"""The supervised loss: negative log-likelihood of completion tokens."""

from __future__ import annotations

import torch


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, dict]:
    """sum(-logprobs * mask) / normalizer.

    logprobs, mask: [N, T]. `normalizer` is the number of target tokens in the whole optimizer step,
    so summing micro-batch losses gives the step's token-mean NLL whatever the micro-batch size.
    """
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} disagree")
    nll_sum = -(logprobs * mask).sum()
    return nll_sum / normalizer, {"nll_sum": float(nll_sum.detach()), "tokens": float(mask.sum())}
