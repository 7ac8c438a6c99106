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


def seam_ratios(images: Tensor, periods: tuple[int, ...] = PERIODS, patch: int = 4) -> dict[int, float]:
    """``images`` ``(N, C, H, W)``, uint8 or float: for each period, the mean step across lines at
    its multiples over the mean step across lines that are no multiple of ``patch``."""
    x = images.float()
    across_columns = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # (W-1,): column j | j+1
    across_rows = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(0, 1, 3))  # (H-1,): row i | i+1
    steps = torch.cat([across_columns, across_rows])
    # the line between pixels k and k+1 lies at position k+1
    positions = torch.cat([torch.arange(1, x.shape[-1]), torch.arange(1, x.shape[-2])])
    inside = steps[positions % patch != 0].mean()
    return {period: float(steps[positions % period == 0].mean() / inside) for period in periods}
