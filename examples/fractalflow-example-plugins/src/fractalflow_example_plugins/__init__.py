"""Example fractalflow plugins, installed through the ``fractalflow.plugins`` entry point.

- ``midpoint`` (sampler): the explicit midpoint rule (second-order Runge-Kutta) for the
  rectified-flow ODE: two velocity evaluations per step, like Heun, but evaluated half a step
  ahead; a plugin sampler is one step function.
- ``palette16`` (postprocess): snaps every pixel to the nearest of 16 flat colours (the
  PICO-8 palette), for a sticker look.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fractalflow.plugins import Plugin

# PICO-8's 16 colours (CC0), as 0-255 RGB
PALETTE = torch.tensor(
    [
        [0, 0, 0], [29, 43, 83], [126, 37, 83], [0, 135, 81], [171, 82, 54], [95, 87, 79], [194, 195, 199],
        [255, 241, 232], [255, 0, 77], [255, 163, 0], [255, 236, 39], [0, 228, 54], [41, 173, 255],
        [131, 118, 156], [255, 119, 168], [255, 204, 170],
    ],
    dtype=torch.float32,
)  # fmt: skip


def midpoint_step(velocity, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
    """One explicit-midpoint step from t to t_next; the clean-image estimate from t."""
    v = velocity(x, t.expand(x.shape[0]).to(x.device))
    half = (t + t_next) / 2
    v_half = velocity(x + (half - t) * v, half.expand(x.shape[0]).to(x.device))
    return x + (t_next - t) * v_half, x - t * v


def palette16(images: Tensor) -> Tensor:
    """RGB images (B, 3, H, W) in [-1, 1] with each pixel replaced by its nearest palette colour;
    other channel counts are returned unchanged."""
    if images.shape[1] != 3:
        return images
    palette = PALETTE.to(images.device) / 127.5 - 1.0  # (16, 3) in [-1, 1]
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).float()  # (B*H*W, 3)
    nearest = torch.cdist(pixels, palette).argmin(dim=1)
    batch, _, height, width = images.shape
    return palette[nearest].reshape(batch, height, width, 3).permute(0, 3, 1, 2).to(images.dtype)


PLUGINS = [
    Plugin("sampler", "midpoint", "0.1.0", midpoint_step, "explicit midpoint (RK2), two evaluations per step"),
    Plugin("postprocess", "palette16", "0.1.0", palette16, "snap pixels to the 16-colour PICO-8 palette"),
]
