"""One supervised optimizer step over micro-batches, normalised over the whole step."""

from __future__ import annotations

import torch

from reasonloop.algos.sft import sft_loss, smoothed_sft_loss
from reasonloop.models.forward import ForwardConfig, TokenBatch, completion_logits, completion_logprobs
from reasonloop.train.optim import clip_and_step


def supervised_step(
    model: torch.nn.Module, batch: TokenBatch, micro_batch_size: int, optimizer, scheduler, max_grad_norm: float,
    loss_mask: torch.Tensor | None = None, label_smoothing: float = 0.0, forward: ForwardConfig | None = None,
) -> dict[str, float]:
    """Token-mean NLL over every completion token of `batch`; gradients accumulate across micro-batches.
    `loss_mask` [N, T] (multi-turn episodes, `encode_episodes`): the loss on these completion tokens only; the
    others stay context.

    The normaliser is the step's total token count, so the update does not depend on
    `micro_batch_size`. A non-finite gradient skips the optimizer step (reported as `skipped`).
    `label_smoothing` > 0: the smoothed cross-entropy instead (`algos.sft.smoothed_sft_loss`). `forward`: the
    training forward's switches (`models.forward.ForwardConfig`; default: all on but logit_chunk).
    """
    device = next(model.parameters()).device
    normalizer = float((batch.completion_mask if loss_mask is None else loss_mask).sum())
    model.train()
    total = 0.0
    for start in range(0, len(batch), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        mb = batch.select(rows).to(device)
        mask = mb.completion_mask if loss_mask is None else loss_mask[rows, : mb.completion_ids.shape[1]].to(device)
        if label_smoothing > 0:
            loss = smoothed_sft_loss(completion_logits(model, mb), mb.completion_ids, mask, normalizer, label_smoothing)
        else:
            loss, _ = sft_loss(completion_logprobs(model, mb, forward=forward), mask, normalizer)
        loss.backward()
        total += float(loss.detach())
    lr = scheduler.get_last_lr()[0]
    grad_norm, stepped = clip_and_step(model, optimizer, scheduler, max_grad_norm)
    return {"loss": total, "grad_norm": grad_norm, "lr": lr, "tokens": normalizer, "skipped": float(not stepped)}
