"""Small layers the fractal transformer's blocks are built from: feed-forwards, adaptive norms.

References:
- GEGLU: Shazeer 2020, "GLU Variants Improve Transformer".
- adaLN-Zero modulation: Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (DiT).
- AdaRMSNorm: Crowson et al. 2024, "Scalable High-Resolution Pixel-Space Image Synthesis with
  Hourglass Diffusion Transformers" (HDiT).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

FEED_FORWARDS = ("geglu", "gelu")


class GEGLU(nn.Module):
    """Gated feed-forward: ``out(gelu(gate) * value)``, hidden width ``ratio * width``."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.proj = nn.Linear(width, 2 * hidden)
        self.out = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(value * F.gelu(gate))


class GELUMLP(nn.Module):
    """Plain feed-forward ``out(gelu(proj(x)))`` with the parameters of a GEGLU of the same
    ``ratio`` (hidden width ``1.5 * ratio * width``), so the two compare at equal size."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(1.5 * width * ratio)
        self.proj = nn.Linear(width, hidden)
        self.out = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.gelu(self.proj(x)))


def feed_forward(kind: str, width: int, ratio: float) -> nn.Module:
    if kind == "geglu":
        return GEGLU(width, ratio)
    if kind == "gelu":
        return GELUMLP(width, ratio)
    raise ValueError(f"feed_forward={kind!r}; allowed: {', '.join(FEED_FORWARDS)}")


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class AdaRMSNorm(nn.Module):
    """RMS norm whose scale is ``1 + linear(vector)``, the linear starting at zero (HDiT)."""

    def __init__(self, width: int, mapping_width: int):
        super().__init__()
        self.linear = nn.Linear(mapping_width, width, bias=False)

    def forward(self, x: Tensor, vector: Tensor) -> Tensor:
        scale = 1 + self.linear(vector)[:, None, None, :]  # (B, mapping) -> (B, 1, 1, width)
        return F.rms_norm(x, (x.shape[-1],), eps=1e-6) * scale
