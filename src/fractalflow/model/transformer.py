"""FractalTransformer: a recursive hourglass of token levels that predicts flow velocity.

A level runs some blocks, hands 2×2-merged tokens to its inner level (itself a level),
splits the result back and blends it with a learned skip, then runs more blocks.
Fine levels attend in shifted local windows, the coarsest globally, so the cost of a
forward pass grows linearly with the number of pixels.

References:
- the hourglass of token levels with a learned skip: Crowson et al. 2024, "Scalable
  High-Resolution Pixel-Space Image Synthesis with Hourglass Diffusion Transformers" (HDiT);
  Nawrot et al. 2022, "Hierarchical Transformers Are More Efficient Language Models";
- shifted windows: Liu et al. 2021, "Swin Transformer";
- patch tokens and adaLN-Zero conditioning: Peebles & Xie 2023, "Scalable Diffusion Models
  with Transformers" (DiT); cross-attention to text: PixArt-α (Chen et al. 2023);
- 2-D rotary positions: Su et al. 2021 (RoFormer), axial as in HDiT; QK-norm: Dehghani et al.
  2023, "Scaling Vision Transformers to 22 Billion Parameters";
- rectified flow / velocity target: Liu et al. 2022, "Flow Straight and Fast"; Esser et al. 2024
  (SD3) for logit-normal times; x0 prediction with a velocity loss: Li & He 2025, "Back to
  Basics: Let Denoising Generative Models Denoise".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalflow.config import FractalConfig
from fractalflow.model.attention import CrossAttention, SelfAttention
from fractalflow.model.conditioning import ConditionEmbedder, Conditioning
from fractalflow.model.layers import AdaRMSNorm, feed_forward, modulate


def merge_tokens(x: Tensor, factor: int) -> Tensor:
    """``(B, H, W, C)`` -> ``(B, H/f, W/f, f*f*C)``: each ``f``×``f`` block of tokens becomes one
    token holding the block's rows, then columns, then channels (space to depth)."""
    batch, height, width, channels = x.shape
    h, w = height // factor, width // factor
    x = x.reshape(batch, h, factor, w, factor, channels).permute(0, 1, 3, 2, 4, 5)  # (B, h, w, f, f, C)
    return x.reshape(batch, h, w, factor * factor * channels)


def split_tokens(x: Tensor, factor: int) -> Tensor:
    """The inverse of :func:`merge_tokens`: ``(B, h, w, f*f*C)`` -> ``(B, h*f, w*f, C)``."""
    batch, h, w, dim = x.shape
    channels = dim // (factor * factor)
    x = x.view(batch, h, w, factor, factor, channels).permute(0, 1, 3, 2, 4, 5)  # (B, h, f, w, f, C)
    return x.reshape(batch, h * factor, w * factor, channels)


def bilinear_split_tokens(x: Tensor, factor: int) -> Tensor:
    """As :func:`split_tokens`, but child token (Y, X) takes the bilinear blend, over the parents
    around it, of the channels for its sub-position ``(Y % f, X % f)``: ``(B, h, w, f*f*C)`` ->
    ``(B, h*f, w*f, C)``. Equal to :func:`split_tokens` where neighbouring parents are equal."""
    batch, h, w, dim = x.shape
    channels = dim // (factor * factor)
    up = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=factor, mode="bilinear", align_corners=False)
    up = up.view(batch, factor, factor, channels, h, factor, w, factor)  # (B, fy, fx, C, h, sy, w, sx)
    # keep sub-position (sy, sx) of the channels meant for it: fy == sy and fx == sx
    picked = torch.stack([up[:, i, :, :, :, i] for i in range(factor)], dim=4)  # (B, fx, C, h, sy, w, sx)
    picked = torch.stack([picked[:, j, :, :, :, :, j] for j in range(factor)], dim=5)  # (B, C, h, sy, w, sx)
    return picked.reshape(batch, channels, h * factor, w * factor).permute(0, 2, 3, 1)  # (B, H, W, C)


def patchify(x: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` pixels -> ``(B, H/patch, W/patch, patch*patch*C)`` tokens."""
    return merge_tokens(x.permute(0, 2, 3, 1), patch)  # (B, C, H, W) -> (B, H, W, C) -> tokens


def unpatchify(tokens: Tensor, patch: int) -> Tensor:
    """The inverse of :func:`patchify`: ``(B, H/patch, W/patch, patch*patch*C)`` -> ``(B, C, H, W)``."""
    return split_tokens(tokens, patch).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


class FractalBlock(nn.Module):
    """One transformer block: self-attention, optional cross-attention to text, feed-forward,
    each a residual branch on a normalised input conditioned on ``vector``.

    ``config.modulation``: adaLN-Zero (a shift, scale and gate per branch from ``vector``, the
    gates starting at zero) or AdaRMSNorm (a scale only; the branches' output layers start at
    zero instead). x: ``(B, H, W, width)``; ``vector``: ``(B, mapping_width)``.
    """

    def __init__(self, config: FractalConfig, width: int, window: int | None, shifted: bool, cross: bool):
        super().__init__()
        self.adaptive_rms = config.modulation == "adarmsnorm"

        def norm() -> nn.Module:
            if self.adaptive_rms:
                return AdaRMSNorm(width, config.mapping_width)
            return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)

        # registration order fixes the order of random initialisation: keep it
        self.norm_attn = norm()
        self.attn = SelfAttention(width, config.head_dim, window, shifted, cosine=config.attention_norm == "cosine")
        self.norm_cross = nn.LayerNorm(width, eps=1e-6) if cross else None
        self.cross = CrossAttention(width, config.cond_dim, config.head_dim) if cross else None
        self.norm_mlp = norm()
        self.mlp = feed_forward(config.feed_forward, width, config.mlp_ratio)
        self.modulation = None
        if not self.adaptive_rms:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.mapping_width, 6 * width))

    def zero_init(self) -> None:
        """Start as the identity: zero gates (adaLN-Zero) or zero branch outputs (AdaRMSNorm)."""
        if self.adaptive_rms:
            for layer in (self.norm_attn.linear, self.norm_mlp.linear, self.attn.out, self.mlp.out):
                nn.init.zeros_(layer.weight)
        else:
            nn.init.zeros_(self.modulation[-1].weight)
            nn.init.zeros_(self.modulation[-1].bias)
        if self.cross is not None:
            nn.init.zeros_(self.cross.out.weight)

    def forward(self, x: Tensor, vector: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        if self.adaptive_rms:
            x = x + self.attn(self.norm_attn(x, vector))
            x = self.cross_attend(x, tokens, mask)
            return x + self.mlp(self.norm_mlp(x, vector))
        mods = self.modulation(vector)[:, None, None, :].chunk(6, dim=-1)  # 6 x (B, 1, 1, width)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        x = x + gate_a * self.attn(modulate(self.norm_attn(x), shift_a, scale_a))
        x = self.cross_attend(x, tokens, mask)
        return x + gate_m * self.mlp(modulate(self.norm_mlp(x), shift_m, scale_m))

    def cross_attend(self, x: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        if self.cross is None or tokens is None:
            return x
        return x + self.cross(self.norm_cross(x), tokens, mask)


class TokenMerge(nn.Module):
    """``factor``×``factor`` neighbouring tokens -> one token of the next level's width."""

    def __init__(self, width: int, inner_width: int, factor: int):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(width * factor * factor, inner_width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(merge_tokens(x, self.factor))  # (B, H, W, C) -> (B, H/f, W/f, inner)


class TokenSplit(nn.Module):
    """One inner token -> ``factor``×``factor`` tokens, blended with the skip by a learned factor."""

    def __init__(self, inner_width: int, width: int, factor: int, placement: str = "block"):
        super().__init__()
        self.factor = factor
        self.place = bilinear_split_tokens if placement == "bilinear" else split_tokens
        self.proj = nn.Linear(inner_width, width * factor * factor, bias=False)
        self.skip_blend = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.place(self.proj(x), self.factor)  # (B, h, w, inner) -> (B, h*f, w*f, width)
        return torch.lerp(skip, x, self.skip_blend.to(x.dtype))


class SplitMixing(nn.Module):
    """A residual 3x3 depthwise convolution over the tokens a TokenSplit made: one coarse token
    becomes ``factor``×``factor`` fine ones, and without mixing their borders show as blocks.
    Zero-initialised, so adding it to a trained network changes nothing until it learns."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=1, groups=width)
        self.zero_init()

    def zero_init(self) -> None:
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        mixed = self.conv(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
        return x + mixed.permute(0, 2, 3, 1)  # back to (B, H, W, C)


class FractalLevel(nn.Module):
    """Level ``index`` of the hourglass: blocks, the inner level (recursively), blocks.

    ``block(config, width, window, shifted, cross)`` builds each block (FractalBlock unless
    another hourglass transformer, such as the HDiT peer, brings its own).
    """

    def __init__(self, config: FractalConfig, index: int, block: type[nn.Module] = FractalBlock):
        super().__init__()
        width, depth = config.widths[index], config.depths[index]
        coarsest = index == config.num_levels - 1
        window = None if coarsest else config.window
        cross = config.uses_cross_attention(index)

        def blocks(first: int) -> nn.ModuleList:
            # windows shift every other block counted over the whole level, down side then up side,
            # so a level with one block a side still mixes across window borders
            return nn.ModuleList(
                block(config, width, window, shifted=(first + i) % 2 == 1, cross=cross) for i in range(depth)
            )

        self.down_blocks = blocks(0)
        self.mix = None
        if coarsest:
            self.merge = self.inner = self.split = self.up_blocks = None
        else:
            inner_width = config.widths[index + 1]
            self.merge = TokenMerge(width, inner_width, config.merge_factor)
            self.inner = FractalLevel(config, index + 1, block)
            self.split = TokenSplit(inner_width, width, config.merge_factor, config.token_split)
            if config.split_mixing == "depthwise-conv":
                self.mix = SplitMixing(width)
            self.up_blocks = blocks(depth)

    def forward(self, x: Tensor, vector: Tensor, tokens: Tensor | None, mask: Tensor | None) -> Tensor:
        for block in self.down_blocks:
            x = block(x, vector, tokens, mask)
        if self.inner is None:
            return x
        inner = self.inner(self.merge(x), vector, tokens, mask)
        x = self.split(inner, x)
        if self.mix is not None:
            x = self.mix(x)
        for block in self.up_blocks:
            x = block(x, vector, tokens, mask)
        return x


X0_MIN_TIME = 0.05  # x0 prediction: the velocity divides by t, kept at least this (as JiT clips it)


class FinalLayer(nn.Module):
    """Level-0 tokens back to patch pixels: a norm modulated by the condition vector (shift and
    scale, as DiT's final layer), then a linear map, zero at initialisation."""

    def __init__(self, width: int, mapping_width: int, patch_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(mapping_width, 2 * width))
        self.proj = nn.Linear(width, patch_dim)

    def zero_init(self) -> None:
        for linear in (self.modulation[-1], self.proj):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, vector: Tensor) -> Tensor:
        shift, scale = self.modulation(vector)[:, None, None, :].chunk(2, dim=-1)  # 2 x (B, 1, 1, width)
        return self.proj(modulate(self.norm(x), shift, scale))


# state-dict key prefixes of model folders written before FinalLayer, and what they are now
RENAMED_KEYS = {"out_modulation.": "final.modulation.", "out_proj.": "final.proj."}


def upgrade_state_dict(state: dict[str, Tensor], prefix: str = "") -> None:
    """Rename, in place, the keys below ``prefix`` that older FractalTransformer folders used."""
    for key in [k for k in state if k.startswith(prefix)]:
        for old, new in RENAMED_KEYS.items():
            if key.startswith(prefix + old):
                state[prefix + new + key[len(prefix + old) :]] = state.pop(key)


def velocity_from_x0(x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
    """On the line ``x_t = (1 - t) x0 + t noise`` the velocity ``noise - x0`` is ``(x_t - x0) / t``."""
    return (x_t - x0) / t.clamp_min(X0_MIN_TIME).to(x_t.dtype)[:, None, None, None]  # (B,) -> (B, 1, 1, 1)


class FractalTransformer(nn.Module):
    """Velocity model ``v(x_t, t, condition)`` on pixels.

    ``forward(x, t, cond, drop=None)``: x ``(B, C, H, W)`` in [-1, 1] scale, t ``(B,)`` in
    [0, 1], cond a :class:`Conditioning`; ``drop`` ``(B,)`` bool replaces the condition by
    the learned null condition (classifier-free guidance). Returns ``(B, C, H, W)``.
    H and W must be multiples of ``config.downsampling``.
    """

    config_class = FractalConfig

    def __init__(self, config: FractalConfig):
        super().__init__()
        self.config = config
        patch_dim = config.in_channels * config.patch_size**2
        self.patch_embed = nn.Linear(patch_dim, config.widths[0])
        self.condition = ConditionEmbedder(config.mapping_width, config.cond_dim, config.num_classes)
        self.body = FractalLevel(config, 0)
        self.final = FinalLayer(config.widths[0], config.mapping_width, patch_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier for linear layers; adaLN gates and the output zeroed so training starts at v = 0."""
        if self.patch_embed.weight.is_meta:
            # built on the meta device to receive saved weights: torch's meta normal_ would pull in
            # torch._dynamo and sympy (~75 MB of resident memory) to initialise nothing
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.condition.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.condition.time_mlp[2].weight, std=0.02)
        for module in self.modules():
            if isinstance(module, (FractalBlock, FinalLayer, SplitMixing)):
                module.zero_init()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        upgrade_state_dict(state_dict, prefix)  # folders and checkpoints written before FinalLayer
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def check_size(self, height: int, width: int) -> None:
        self.config.check_size(height, width)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, drop: Tensor | None = None) -> Tensor:
        height, width = x.shape[2:]
        self.check_size(height, width)
        vector, text_tokens, mask = self.condition(t, cond, drop)  # (B, mapping), (B, L, cond_dim), (B, L)
        tokens = self.patch_embed(patchify(x, self.config.patch_size))  # (B, H/patch, W/patch, widths[0])
        tokens = self.body(tokens, vector, text_tokens, mask)
        out = unpatchify(self.final(tokens, vector), self.config.patch_size)  # -> (B, C, H, W)
        if self.config.prediction == "x0":
            return velocity_from_x0(x, out, t)
        return out
