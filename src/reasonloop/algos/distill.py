"""Token-level distillation losses (pure): reverse KL from a student to a teacher at student-sampled prefixes."""

from __future__ import annotations

import torch


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
    if student_logits.shape[:2] != mask.shape:
        raise ValueError(f"logits {tuple(student_logits.shape[:2])} and mask {tuple(mask.shape)} disagree")
    return masked_kl_loss(reverse_kl_per_token(student_logits, teacher_logits), mask, normalizer)


def reverse_kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_s || p_t) at each position [...] of logits [..., V] (the teacher's treated as constant)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ")
    log_s = torch.log_softmax(student_logits.float(), -1)
    log_t = torch.log_softmax(teacher_logits.detach().float(), -1)
    return (log_s.exp() * (log_s - log_t)).sum(-1)


def masked_kl_loss(per_token: torch.Tensor, mask: torch.Tensor, normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-position KL [N, T] summed over the mask and divided by `normalizer` (reverse_kl_tokens' loss)."""
    m = mask.to(per_token.dtype)
    total = (per_token * m).sum()
    return total / normalizer, {"kl_sum": float(total.detach()), "tokens": float(m.sum())}
