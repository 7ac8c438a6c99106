"""Rectified flow: x_t = (1 - t) x0 + t noise, and the network predicts v = noise - x0."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def logit_normal_timesteps(batch: int, mean: float, std: float, generator: torch.Generator) -> Tensor:
    """Flow times in (0, 1), denser in the middle where the velocity is hardest to predict (SD3)."""
    return torch.sigmoid(torch.randn(batch, generator=generator) * std + mean)


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The point at time ``t`` on the straight line from data ``x0`` (t = 0) to ``noise`` (t = 1)."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def rectified_flow_loss(
    velocity_model: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    x0: Tensor,
    generator: torch.Generator,
    cond_drop_prob: float = 0.0,
    timestep_mean: float = 0.0,
    timestep_std: float = 1.0,
    batch: int | None = None,
    rows: slice | None = None,
    noise_generator: torch.Generator | None = None,
) -> Tensor:
    """Mean squared error between predicted and true velocity on one batch.

    ``velocity_model(x_t, t, drop)`` is the network with its condition bound; ``drop``
    marks samples whose condition is replaced by the null condition. All randomness
    comes from generators whose state a checkpoint keeps, so a run can be resumed exactly:
    ``generator`` (on the CPU) draws times and dropout, and the noise too unless
    ``noise_generator`` is given, which draws it on its own device (a CUDA run's GPU). In a run of
    several processes ``x0`` holds the ``rows`` of a global batch of ``batch`` images: times,
    noise and dropout are drawn for the whole batch, as one process would, and sliced.
    """
    batch = x0.shape[0] if batch is None else batch
    rows = slice(0, batch) if rows is None else rows
    t = logit_normal_timesteps(batch, timestep_mean, timestep_std, generator)[rows]
    noise_generator = noise_generator or generator
    noise = torch.randn((batch, *x0.shape[1:]), generator=noise_generator, device=noise_generator.device)[rows]
    drop = (torch.rand(batch, generator=generator) < cond_drop_prob)[rows]
    device = x0.device
    t, noise, drop = t.to(device), noise.to(device, x0.dtype), drop.to(device)
    x_t = interpolate(x0, noise, t)
    predicted = velocity_model(x_t, t, drop if cond_drop_prob > 0 else None)
    return F.mse_loss(predicted.float(), (noise - x0).float())
