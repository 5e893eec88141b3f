"""Token-level distillation maths (pure) and the forward pass that feeds it.

`reverse_kl_tokens` is pure tensor maths and belongs with the other losses in `algos/`; it lives here
until the algos owner moves it (this module's files are the self-improvement issue's).
"""

from __future__ import annotations

import torch

from reasonloop.train.forward import TokenBatch


def reverse_kl_tokens(
    student_logits: torch.Tensor,  # [N, T, V] with grad
    teacher_logits: torch.Tensor,  # [N, T, V] treated as constant
    mask: torch.Tensor,  # [N, T] 1 for completion tokens
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Exact per-position reverse KL, summed over the mask and divided by `normalizer`:

        KL(p_s || p_t)_t = sum_v p_s(v | y_<t) [log p_s(v | y_<t) - log p_t(v | y_<t)]

    evaluated at prefixes y sampled from the student (on-policy distillation, Agarwal et al. 2024
    "GKD" with the reverse-KL divergence; Gu et al. 2024 "MiniLLM" optimise the same objective with
    a policy gradient through the sampling instead). The gradient flows through p_s at each position
    but not through the choice of prefixes (GKD's convention). Reverse KL is mode-seeking: the student
    concentrates on what the teacher rates likely rather than covering all of it.
    `normalizer` = target tokens in the whole optimizer step, so micro-batch sums equal the step mean.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ")
    if student_logits.shape[:2] != mask.shape:
        raise ValueError(f"logits {tuple(student_logits.shape[:2])} and mask {tuple(mask.shape)} disagree")
    log_s = torch.log_softmax(student_logits.float(), -1)
    log_t = torch.log_softmax(teacher_logits.detach().float(), -1)
    per_token = (log_s.exp() * (log_s - log_t)).sum(-1)  # [N, T]
    m = mask.to(per_token.dtype)
    total = (per_token * m).sum()
    return total / normalizer, {"kl_sum": float(total.detach()), "tokens": float(m.sum())}


def completion_logits(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """[N, T, V] logits predicting each completion token (same alignment as `train.forward.policy_forward`)."""
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=False).logits
    P, T = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    return logits[:, P - 1 : P + T - 1, :]
