"""Per-prompt reward weights (AHRO, docs/frameworks.md#ahro): the weighted layered reward and the objective
that trains the weights.

The weight network's objective is the within-group correlation between the weighted *shaping* reward d
(format, step validity, efficiency, each times its per-prompt weight) and the verifier's correctness y:

    corr = sum_i (d_i - mean_g d)(y_i - mean_g y) / sqrt(sum_i (d_i - mean_g d)^2 * sum_i (y_i - mean_g y)^2)

over the rows of groups g whose correctness is mixed (a group that is all right or all wrong says nothing
about which shaping agrees with correctness). Group-centred because GRPO only ever sees within-group
differences: a shaping term that is constant within a group changes no advantage.
"""

from __future__ import annotations

import torch


def weighted_shaping(components: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N, K] component values times [N, K] per-row weights, summed over K -> [N]."""
    if components.shape != weights.shape:
        raise ValueError(f"components {tuple(components.shape)} and weights {tuple(weights.shape)} differ")
    return (components * weights).sum(-1)


def grouped_correlation(d: torch.Tensor, y: torch.Tensor, group_sizes: list[int], eps: float = 1e-8) -> torch.Tensor:
    """The within-group correlation above of d [N] (differentiable) with y [N], over the mixed groups; 0 (with
    no gradient path) when no group is mixed or d does not vary within them."""
    if d.shape != y.shape or d.dim() != 1 or sum(group_sizes) != d.numel():
        raise ValueError(f"d {tuple(d.shape)}, y {tuple(y.shape)} and group sizes {group_sizes} do not match")
    dc, yc = [], []
    start = 0
    for g in group_sizes:
        ys, ds = y[start : start + g], d[start : start + g]
        start += g
        if bool((ys != ys[0]).any()):
            dc.append(ds - ds.mean())
            yc.append(ys - ys.mean())
    if not dc:
        return d.sum() * 0.0
    dcat, ycat = torch.cat(dc), torch.cat(yc)
    return (dcat * ycat).sum() / torch.sqrt((dcat**2).sum() * (ycat**2).sum() + eps)
