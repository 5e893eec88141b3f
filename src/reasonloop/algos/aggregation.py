"""Loss aggregation as a named mode, invariant to micro-batching.

How per-token losses become one scalar is a choice with consequences (length bias, per-sequence vs
per-token weighting), so it is an explicit, named mode here rather than a hidden `.mean()`.

Two steps, so that micro-batching, gradient accumulation and a data-parallel split never change the
result:

1. `step_normalizer(mask_of_whole_step, mode, max_len)` -> one float, computed ONCE for the whole
   optimizer step (all micro-batches, all ranks: on several ranks, all-reduce the step's token /
   sequence counts first, or pass every rank's masks).
2. `aggregate(token_loss, mask, mode, normalizer)` -> a scalar for each micro-batch. The numerator
   of every mode is a plain sum over tokens (or over sequences of a sequence-local quantity), so

       sum over micro-batches of aggregate(mb) == aggregate(whole step)

   exactly (up to float rounding), and so are the accumulated gradients. Call `backward()` on each
   micro-batch result and do NOT divide by the number of accumulation steps.

Modes (L_{i,t} token loss, m_{i,t} in {0, 1} the mask, |o_i| = sum_t m_{i,t}):

- ``"token_mean"`` (DAPO, Yu et al. 2025):
      L = sum_{i,t} m_{i,t} L_{i,t} / sum_{i,t} m_{i,t}
  every token of the step weighs the same; long sequences count more.
- ``"seq_mean_token_mean"`` (original GRPO, Shao et al. 2024):
      L = (1 / N_seq) * sum_i [ sum_t m_{i,t} L_{i,t} / |o_i| ]
  each sequence weighs the same; the per-sequence mean is local to its row, so only the count of
  sequences N_seq needs the whole step. N_seq counts sequences with at least one valid token; a row
  whose mask is all zero contributes nothing and is not counted.
- ``"seq_mean_token_sum_norm"`` (Dr.GRPO, Liu et al. 2025):
      L = sum_{i,t} m_{i,t} L_{i,t} / (N_seq * max_len)
  a constant normaliser (max_len is the fixed generation budget), removing the length bias of the
  per-sequence mean. `max_len` defaults to the padded width T of the step mask; pass the generation
  budget explicitly when micro-batches are padded to different widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

AGGREGATION_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


# ---------------------------------------------------------------------------------------------
# Small shared checks and masked statistics (used by every module of `algos`).
# ---------------------------------------------------------------------------------------------


def check_shape(name: str, x: torch.Tensor, shape: Sequence[int | None]) -> None:
    """Raise ValueError unless `x` has len(shape) dims and matches every non-None entry."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless all given tensors have the same shape."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, x in items:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.shape != first.shape:
            raise ValueError(f"{name} has shape {list(x.shape)} but {first_name} has {list(first.shape)}")


def check_mode(mode: str) -> None:
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGGREGATION_MODES}")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) over `dim` (all dims when None). Masked entries may hold inf/NaN safely."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x * mask) / sum(mask); 0 where the mask is empty (never NaN)."""
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of the valid entries of `x` (a 0-dim tensor); 0 when fewer than two entries."""
    n = mask.to(x.dtype).sum()
    mean = masked_mean(x, mask)
    ss = masked_sum((x - mean) ** 2, mask)
    denom = n - 1.0 if unbiased else n
    return torch.where(denom > 0, ss / denom.clamp(min=1.0), torch.zeros_like(ss))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / (std + eps) over the valid entries; masked entries are 0.

    Uses the population std. If all valid entries are equal the result is exactly 0 (not
    rounding noise divided by eps).
    """
    mean = masked_mean(x, mask)
    centred = x - mean
    std = masked_var(x, mask).sqrt()
    valid = mask.bool()
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    all_equal = torch.where(valid, x, -inf).max() == torch.where(valid, x, inf).min()
    out = centred / (std + eps)
    out = torch.where(valid & ~all_equal, out, torch.zeros_like(out))
    return out


# ---------------------------------------------------------------------------------------------
# The two-step aggregation.
# ---------------------------------------------------------------------------------------------


def _as_masks(mask: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    masks = [mask] if isinstance(mask, torch.Tensor) else list(mask)
    if not masks:
        raise ValueError("step_normalizer needs at least one mask")
    for k, m in enumerate(masks):
        check_shape(f"mask[{k}]", m, (None, None))
    return masks


def step_normalizer(
    mask: torch.Tensor | Sequence[torch.Tensor],  # [N, T] of the WHOLE step, or a list of [N_k, T_k]
    mode: str,
    max_len: int | None = None,
) -> float:
    """The denominator of aggregation mode `mode` for one whole optimizer step.

    - token_mean:              sum of the mask (valid tokens in the step)
    - seq_mean_token_mean:     number of sequences with >= 1 valid token
    - seq_mean_token_sum_norm: (number of sequences with >= 1 valid token) * max_len

    `mask` is the step's mask, or the list of all its micro-batch masks (they may have different
    widths). `max_len` is only used by ``seq_mean_token_sum_norm``; it defaults to the mask width
    and must be given when a list of masks of different widths is passed. Returns at least 1.0 so an
    all-masked step yields a zero loss rather than NaN.
    """
    check_mode(mode)
    masks = _as_masks(mask)
    if mode == "token_mean":
        total = sum(float(m.sum()) for m in masks)
        return max(total, 1.0)
    n_seq = sum(int((m.sum(dim=-1) > 0).sum()) for m in masks)
    if mode == "seq_mean_token_mean":
        return float(max(n_seq, 1))
    if max_len is None:
        widths = {m.shape[-1] for m in masks}
        if len(widths) != 1:
            raise ValueError("seq_mean_token_sum_norm over masks of different widths needs max_len")
        max_len = widths.pop()
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return float(max(n_seq, 1) * max_len)


def aggregate(
    token_loss: torch.Tensor,  # [N, T]
    mask: torch.Tensor,  # [N, T] 0/1
    mode: str,
    normalizer: float | None = None,
    max_len: int | None = None,
) -> torch.Tensor:  # [] scalar
    """Reduce per-token losses of one micro-batch with the named mode (see module docstring).

    `normalizer` must come from `step_normalizer` over the whole step; when None it is computed
    from this `mask` alone (correct only when this micro-batch IS the whole step). Masked entries of
    `token_loss` are ignored even if they hold inf/NaN.
    """
    check_mode(mode)
    check_shape("token_loss", token_loss, (None, None))
    check_same_shape(token_loss=token_loss, mask=mask)
    if normalizer is None:
        normalizer = step_normalizer(mask, mode, max_len)
    if mode == "seq_mean_token_mean":
        per_seq = masked_mean(token_loss, mask, dim=-1)  # [N]; 0 for empty rows
        return per_seq.sum() / normalizer
    return masked_sum(token_loss, mask) / normalizer
