"""HDiT, the Hourglass Diffusion Transformer (Crowson et al., 2024, "Scalable High-Resolution
Pixel-Space Image Synthesis with Hourglass Diffusion Transformers"), written from the paper
for the peer benchmark: k-diffusion's ``image_transformer_v2`` is not in its PyPI release
(0.1.1.post1), and no code is copied from its repository.

From the paper: an hourglass of token levels (2x2 token merge, split, and a learned lerp
skip between the two sides of a level); neighbourhood attention at the fine levels and
global attention at the coarsest; cosine-similarity attention with a learned per-head
scale; axial rotary positions on half of each head's dimensions; AdaRMSNorm (a scale from
the mapping vector, no shift, no gate) before attention and feed-forward; GEGLU
feed-forward; zero-initialised residual outputs; a mapping network of RMSNorm + GEGLU
blocks. Changed for this comparison: neighbourhood attention becomes shifted-window
attention (the fallback k-diffusion offers without NATTEN); the mapping network takes
rectified-flow time plus the pooled text instead of noise level plus class; the coarsest
level cross-attends to the text tokens, as every model in the comparison does.

The hourglass skeleton (levels, merge, split, skip) is fractalflow's ``FractalLevel``:
ours descends from HDiT, so the blocks, norms, attention and mapping are what differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peer_models import PeerConfig, TextConditionedPeer
from torch import Tensor, nn

from fractalflow.model.attention import CrossAttention, apply_rope, global_attention, rope_angles, window_attention
from fractalflow.model.conditioning import Conditioning, timestep_features
from fractalflow.model.layers import GEGLU
from fractalflow.model.transformer import FractalLevel, patchify, unpatchify


@dataclass(frozen=True)
class HDiTConfig(PeerConfig):
    """Shape of an HDiT: level i has width ``widths[i]`` and ``depths[i]`` blocks a side."""

    patch_size: int = 2
    widths: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 6)
    head_dim: int = 32
    window: int = 8
    merge_factor: int = 2
    mlp_ratio: float = 3.0
    mapping_width: int = 256
    mapping_depth: int = 2
    cross_attention_levels: int = 1
    # FractalLevel reads them: k-diffusion's HDiT mixes nothing after a TokenSplit, and its
    # TokenSplit gives each child its own parent's projection
    split_mixing: str = "none"
    token_split: str = "block"

    @property
    def num_levels(self) -> int:
        return len(self.widths)

    @property
    def downsampling(self) -> int:
        return self.patch_size * self.merge_factor ** (self.num_levels - 1)

    def uses_cross_attention(self, level: int) -> bool:
        return level >= self.num_levels - self.cross_attention_levels


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


class AdaRMSNorm(nn.Module):
    """RMS norm whose scale is ``1 + linear(mapping vector)`` (the linear starts at zero)."""

    def __init__(self, width: int, mapping_width: int):
        super().__init__()
        self.linear = zero_linear(mapping_width, width)

    def forward(self, x: Tensor, vector: Tensor) -> Tensor:
        scale = 1 + self.linear(vector)[:, None, None, :]
        return F.rms_norm(x, (x.shape[-1],), eps=1e-6) * scale


class CosineSelfAttention(nn.Module):
    """Self-attention on the cosine similarity of q and k times a learned per-head scale
    (init 10), axial rotary positions on the first half of each head, windowed or global."""

    def __init__(self, width: int, head_dim: int, window: int | None, shifted: bool):
        super().__init__()
        if head_dim % 8:
            raise ValueError(f"head_dim={head_dim} must be a multiple of 8 (rotary positions on half of it)")
        self.heads, self.head_dim = width // head_dim, head_dim
        self.window = window
        self.shift = window // 2 if (window and shifted) else 0
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.scale = nn.Parameter(torch.full((self.heads, 1), 10.0))
        self.out = zero_linear(width, width)

    def rotate_half(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = self.head_dim // 2
        return torch.cat([apply_rope(x[..., :half], cos, sin), x[..., half:]], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        q, k, v = self.qkv(x).view(batch, height, width, 3, self.heads, self.head_dim).unbind(3)
        # SDPA divides by sqrt(head_dim): multiply it back so the logits are scale * cos(q, k)
        q = F.normalize(q, dim=-1) * (self.scale * math.sqrt(self.head_dim)).to(q.dtype)
        k = F.normalize(k, dim=-1)
        cos, sin = rope_angles(height, width, self.head_dim // 2, x.device)
        q, k = self.rotate_half(q, cos, sin), self.rotate_half(k, cos, sin)
        if self.window is None:
            out = global_attention(q, k, v)
        else:
            out = window_attention(q, k, v, self.window, self.shift)
        return self.out(out.reshape(batch, height, width, channels))


class HDiTBlock(nn.Module):
    """AdaRMSNorm -> attention, (text cross-attention), AdaRMSNorm -> GEGLU; plain residuals."""

    def __init__(self, config: HDiTConfig, width: int, window: int | None, shifted: bool, cross: bool):
        super().__init__()
        self.attn_norm = AdaRMSNorm(width, config.mapping_width)
        self.attn = CosineSelfAttention(width, config.head_dim, window, shifted)
        self.cross_norm = nn.RMSNorm(width, eps=1e-6) if cross else None
        self.cross = CrossAttention(width, config.cond_dim, config.head_dim) if cross else None
        if self.cross is not None:
            nn.init.zeros_(self.cross.out.weight)
            nn.init.zeros_(self.cross.out.bias)
        self.ff_norm = AdaRMSNorm(width, config.mapping_width)
        self.ff = GEGLU(width, config.mlp_ratio)
        nn.init.zeros_(self.ff.out.weight)
        nn.init.zeros_(self.ff.out.bias)

    def forward(self, x: Tensor, vector: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.attn_norm(x, vector))
        if self.cross is not None and tokens is not None:
            x = x + self.cross(self.cross_norm(x), tokens, mask)
        return x + self.ff(self.ff_norm(x, vector))


class MappingNetwork(nn.Module):
    """RMSNorm, then ``depth`` residual GEGLU blocks with RMSNorm, then RMSNorm."""

    def __init__(self, width: int, depth: int, mlp_ratio: float):
        super().__init__()
        self.norm_in = nn.RMSNorm(width, eps=1e-6)
        self.norms = nn.ModuleList(nn.RMSNorm(width, eps=1e-6) for _ in range(depth))
        self.blocks = nn.ModuleList(GEGLU(width, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.RMSNorm(width, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm_in(x)
        for norm, block in zip(self.norms, self.blocks):
            x = x + block(norm(x))
        return self.norm_out(x)


class HDiT(TextConditionedPeer):
    """HDiT as a rectified-flow velocity model ``v(x_t, t, text)`` on pixels."""

    config_class = HDiTConfig

    def __init__(self, config: HDiTConfig):
        super().__init__(config)
        patch_dim = config.in_channels * config.patch_size**2
        self.time_in = nn.Linear(config.mapping_width, config.mapping_width)
        self.text_in = nn.Linear(config.cond_dim, config.mapping_width)
        self.mapping = MappingNetwork(config.mapping_width, config.mapping_depth, config.mlp_ratio)
        self.patch_in = nn.Linear(patch_dim, config.widths[0])
        self.body = FractalLevel(config, 0, block=HDiTBlock)
        self.out_norm = nn.RMSNorm(config.widths[0], eps=1e-6)
        self.patch_out = zero_linear(config.widths[0], patch_dim)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, drop: Tensor | None = None) -> Tensor:
        height, width = x.shape[2:]
        self.check_size(height, width)
        pooled, tokens, mask = self.text(cond, drop)
        vector = self.mapping(self.time_in(timestep_features(t, self.config.mapping_width)) + self.text_in(pooled))
        tokens_out = self.body(self.patch_in(patchify(x, self.config.patch_size)), vector, tokens, mask)
        return unpatchify(self.patch_out(self.out_norm(tokens_out)), self.config.patch_size)
