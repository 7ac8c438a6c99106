"""Attention for the fractal transformer: 2-D rotary positions, shifted-window and global
self-attention, and cross-attention to condition tokens.

Tensors keep the token grid: ``(batch, height, width, channels)``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROPE_THETA = 100.0  # token grids are small (<= 128 a side); this spreads periods over 1..300 tokens


@functools.lru_cache(maxsize=64)
def rope_angles(height: int, width: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin of 2-D rotary angles, shape ``(height, width, 1, head_dim // 2)``.

    Half of the rotated pairs encode the row, half the column, so attention scores
    depend only on relative offsets and one set of weights serves any grid size.
    """
    quarter = head_dim // 4
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        return _rope_angles(height, width, quarter, device)


def _rope_angles(height: int, width: int, quarter: int, device: torch.device) -> tuple[Tensor, Tensor]:
    freqs = ROPE_THETA ** (-torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
    rows = torch.arange(height, dtype=torch.float32, device=device)[:, None] * freqs
    cols = torch.arange(width, dtype=torch.float32, device=device)[:, None] * freqs
    angles = torch.cat(
        [rows[:, None, :].expand(height, width, quarter), cols[None, :, :].expand(height, width, quarter)], dim=-1
    )[:, :, None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(i, i + head_dim/2)`` of ``x`` (..., head_dim) by the given angles."""
    first, second = x.float().chunk(2, dim=-1)
    rotated = torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
    return rotated.to(x.dtype)


@functools.lru_cache(maxsize=64)
def window_region_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor | None:
    """Which tokens of a (shifted, padded) window may attend to which: ``(windows, n, n)``.

    Tokens rolled around the edge by the shift and padding tokens form their own
    regions; a token attends only within its region, as in Swin. ``None`` when every
    window is one region (no shift and no padding).
    """
    pad_h, pad_w = -height % window, -width % window
    if shift == 0 and pad_h == 0 and pad_w == 0:
        return None
    with torch.inference_mode(False):  # cached: must stay usable by autograd later
        return _window_region_mask(height, width, window, shift, pad_h, pad_w, device)


def _window_region_mask(
    height: int, width: int, window: int, shift: int, pad_h: int, pad_w: int, device: torch.device
) -> Tensor:
    full_h, full_w = height + pad_h, width + pad_w
    # position i of the rolled map holds original position (i + shift) mod size
    rolled_rows = torch.arange(full_h, device=device) + shift
    rolled_cols = torch.arange(full_w, device=device) + shift
    region = (rolled_rows[:, None] >= full_h).long() * 2 + (rolled_cols[None, :] >= full_w).long()
    padding = (rolled_rows[:, None] % full_h >= height) | (rolled_cols[None, :] % full_w >= width)
    region = torch.where(padding, -1, region)
    windows = region.view(full_h // window, window, full_w // window, window).transpose(1, 2)  # (rows, cols, w, w)
    windows = windows.reshape(-1, window * window)  # (windows, n)
    return windows[:, :, None] == windows[:, None, :]


def global_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Every token attends to every token. q, k, v: ``(B, H, W, heads, head_dim)``; logits are
    ``q·k * scale`` (default ``1/sqrt(head_dim)``)."""
    batch, height, width, heads, head_dim = q.shape

    def flat(t: Tensor) -> Tensor:
        return t.reshape(batch, height * width, heads, head_dim).transpose(1, 2)  # (B, heads, H*W, head_dim)

    out = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), scale=scale)
    return out.transpose(1, 2).reshape(batch, height, width, heads, head_dim)  # back to (B, H, W, heads, head_dim)


def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int, shift: int, scale: float | None = None) -> Tensor:
    """Attention inside ``window``×``window`` tiles, the tiling moved by ``shift`` tokens.

    q, k, v: ``(B, H, W, heads, head_dim)`` with rotary positions already applied.
    A window that covers the whole map is global attention (no shift is needed).
    """
    batch, height, width, heads, head_dim = q.shape
    if window >= height and window >= width:
        return global_attention(q, k, v, scale)
    pad_h, pad_w = -height % window, -width % window
    full_h, full_w = height + pad_h, width + pad_w
    rows, cols = full_h // window, full_w // window

    def tile(t: Tensor) -> Tensor:
        if pad_h or pad_w:
            t = F.pad(t, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
        if shift:
            t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))
        t = t.view(batch, rows, window, cols, window, heads, head_dim)
        t = t.permute(0, 1, 3, 5, 2, 4, 6)  # (B, rows, cols, heads, window, window, head_dim)
        return t.reshape(batch * rows * cols, heads, window * window, head_dim)  # one batch entry per window

    mask = window_region_mask(height, width, window, shift, q.device)
    if mask is not None:
        mask = mask[None, :, None].expand(batch, -1, -1, -1, -1)  # (windows, n, n) -> (B, windows, 1, n, n)
        mask = mask.reshape(batch * rows * cols, 1, *mask.shape[-2:])  # one mask per window
    out = F.scaled_dot_product_attention(tile(q), tile(k), tile(v), attn_mask=mask, scale=scale)
    out = out.view(batch, rows, cols, heads, window, window, head_dim)
    out = out.permute(0, 1, 4, 2, 5, 3, 6)  # (B, rows, window, cols, window, heads, head_dim)
    out = out.reshape(batch, full_h, full_w, heads, head_dim)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    return out[:, :height, :width]


class HeadRMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` with its weight in the input's dtype: under bf16 autocast q and k are bf16,
    and an fp32 weight keeps PyTorch off its fused kernel (it warns so on CUDA). The same
    parameters and the same output in fp32."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class SelfAttention(nn.Module):
    """Multi-head self-attention over a token grid, windowed (``window`` set) or global.

    q and k carry 2-D rotary positions and are normalised per head, for stability at high
    learning rates: RMS-normalised with learned gains (``cosine=False``, QK-norm), or to unit
    length with logits ``scale * cos(q, k)``, a learned scale per head starting at 10
    (``cosine=True``, as HDiT). ``shifted`` moves the window tiling by half a window.
    """

    def __init__(
        self, width: int, head_dim: int, window: int | None = None, shifted: bool = False, cosine: bool = False
    ):
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.window = window
        self.shift = window // 2 if (window and shifted) else 0
        self.qkv = nn.Linear(width, 3 * width)
        if cosine:
            self.q_norm = self.k_norm = None
            self.logit_scale = nn.Parameter(torch.full((self.heads, 1), 10.0))  # (heads, 1): per head
        else:
            self.q_norm = HeadRMSNorm(head_dim)
            self.k_norm = HeadRMSNorm(head_dim)
            self.logit_scale = None
        self.out = nn.Linear(width, width)

    def normalise(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        """q, k ``(B, H, W, heads, head_dim)`` normalised, and the scale the logits then take."""
        if self.logit_scale is None:
            return self.q_norm(q), self.k_norm(k), None
        q = F.normalize(q, dim=-1) * self.logit_scale.to(q.dtype)  # |q| = scale, |k| = 1
        return q, F.normalize(k, dim=-1), 1.0

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).view(batch, height, width, 3, self.heads, self.head_dim)
        q, k, v = qkv.unbind(3)  # each (B, H, W, heads, head_dim)
        cos, sin = rope_angles(height, width, self.head_dim, x.device)
        q, k, scale = self.normalise(q, k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # rotations keep the norms
        if self.window is None:
            out = global_attention(q, k, v, scale)
        else:
            out = window_attention(q, k, v, self.window, self.shift, scale)
        return self.out(out.reshape(batch, height, width, channels))  # heads joined: (B, H, W, C)


class CrossAttention(nn.Module):
    """Image tokens attend to condition tokens (e.g. text); ``mask`` marks real tokens."""

    def __init__(self, width: int, cond_dim: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(cond_dim, 2 * width)
        self.q_norm = HeadRMSNorm(head_dim)
        self.k_norm = HeadRMSNorm(head_dim)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor | None) -> Tensor:
        batch, height, width, channels = x.shape
        q = self.q(x).view(batch, height * width, self.heads, self.head_dim)  # (B, H*W, heads, head_dim)
        q = self.q_norm(q).transpose(1, 2)  # (B, heads, H*W, head_dim)
        kv = self.kv(tokens).view(batch, tokens.shape[1], 2, self.heads, self.head_dim)  # (B, L, 2, heads, d)
        k, v = kv.unbind(2)
        k, v = self.k_norm(k).transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, head_dim)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(out.transpose(1, 2).reshape(batch, height, width, channels))  # (B, H, W, C)
