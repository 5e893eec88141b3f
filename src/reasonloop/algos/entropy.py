"""Per-token entropy of the policy from logits, computed in chunks.

    H_t = -sum_v p_v log p_v = logsumexp(z) - sum_v softmax(z)_v z_v

For a [N, T, V] logits tensor with a 150k vocabulary, `log_softmax` materialises another N*T*V
float32 tensor (plus the softmax); computing in chunks of rows bounds that extra memory to
chunk_size*V. Gradients flow (for an entropy bonus); under autograd the saved activations of
each chunk still live until backward, so for a pure metric call it under `torch.no_grad()`.
"""

from __future__ import annotations

import torch

from reasonloop.algos.aggregation import check_shape


def entropy_from_logits(
    logits: torch.Tensor,  # [N, T, V]
    chunk_size: int = 1024,
) -> torch.Tensor:  # [N, T], float32 or wider
    """Entropy (nats) of softmax(logits) at every position, `chunk_size` positions at a time.

    Computed in at least float32 (bf16 logits are upcast per chunk only). Mask the result
    yourself (e.g. `aggregate(entropy, mask, mode)`); padded positions still get a value.
    """
    check_shape("logits", logits, (None, None, None))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    N, T, V = logits.shape
    flat = logits.reshape(N * T, V)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    pieces = []
    for start in range(0, N * T, chunk_size):
        z = flat[start : start + chunk_size].to(dtype)  # [c, V]
        lse = torch.logsumexp(z, dim=-1)  # [c]
        # -inf logits (banned tokens) have p = 0; zero them so 0 * -inf does not give NaN.
        z_finite = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
        pieces.append(lse - (torch.softmax(z, dim=-1) * z_finite).sum(dim=-1))
    if not pieces:
        return logits.new_zeros((N, T), dtype=dtype)
    return torch.cat(pieces).reshape(N, T)
