"""How blocky are images along the network's token grid?

The network reads 4 px patches and merges them 2×2 per level (8 px, then 16 px tokens). Where
a level's tokens meet, a model with seams changes colour more than between neighbouring
pixels inside a patch. :func:`seam_ratios` measures, for each period P, the mean absolute
difference between neighbouring pixels across the lines at multiples of P (both directions),
over the same mean across the lines inside a patch: 1.0 means no grid at that period.
"""

from __future__ import annotations

import torch
from torch import Tensor

PERIODS = (4, 8, 16, 32)


def line_steps(images: Tensor) -> Tensor:
    """``images`` ``(N, C, S, S)``, uint8 or float: ``(S - 1,)``, entry ``k - 1`` the mean absolute
    step between neighbouring pixels across line ``k`` (between pixels ``k - 1`` and ``k``),
    rows and columns together."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"line_steps needs square images, got {tuple(images.shape[-2:])}")
    x = images.float()
    across_columns = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # (S-1,)
    across_rows = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(0, 1, 3))  # (S-1,)
    return (across_columns + across_rows) / 2


def seam_ratios(images: Tensor, periods: tuple[int, ...] = PERIODS, patch: int = 4) -> dict[int, float]:
    """For each period, the mean step across lines at its multiples over the mean step across
    lines that are no multiple of ``patch`` (:func:`line_steps`)."""
    steps = line_steps(images)
    lines = torch.arange(1, steps.shape[0] + 1)
    inside = steps[lines % patch != 0].mean()
    return {period: float(steps[lines % period == 0].mean() / inside) for period in periods}
