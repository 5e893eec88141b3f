"""Per-token log-probabilities from logits, without materialising a full log-softmax copy."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[ids], computed as gathered logit minus logsumexp.

    logits: [..., V]; ids: [...] -> [...]. `temperature` 0 means greedy decoding, whose
    distribution we score at temperature 1.
    """
    if logits.shape[:-1] != ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ids {tuple(ids.shape)} disagree")
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
