"""Calibration of a confidence that predicts correctness (MFLO's monitor, docs/frameworks.md#mflo)."""

from __future__ import annotations

import torch


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) * |mean correct_b - mean confidence_b| over `bins` equal-width bins of [0, 1]
    (Guo et al. 2017; a confidence of exactly 1 falls in the last bin). 0 for an empty input."""
    if confidence.shape != correct.shape or confidence.dim() != 1:
        raise ValueError(f"confidence {tuple(confidence.shape)} and correct {tuple(correct.shape)} must be equal 1-d")
    n = confidence.numel()
    if n == 0:
        return 0.0
    which = (confidence.clamp(0, 1) * bins).long().clamp(max=bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if bool(sel.any()):
            total += float(sel.sum()) / n * abs(float(correct[sel].float().mean()) - float(confidence[sel].mean()))
    return total


def brier_score(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Mean squared error of the confidence against the 0/1 outcome."""
    return float(((confidence - correct.float()) ** 2).mean()) if confidence.numel() else 0.0
