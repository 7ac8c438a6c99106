"""The networks users would pick instead of ours, behind fractalflow's velocity-model interface.

Each peer is ``model(x, t, cond, drop) -> v`` like :class:`FractalTransformer`, takes the
same MiniLM text features (pooled + tokens, learned null text for guidance) and is built
from a JSON dataclass config, so the Trainer, the samplers, the pipeline and
``fractalflow eval`` run it unchanged. Only the network differs.

- :class:`UNetPeer`: diffusers ``UNet2DConditionModel`` (the Stable Diffusion UNet):
  cross-attention to the text tokens, pooled text added to the time embedding.
- :class:`DiTPeer`: diffusers ``PixArtTransformer2DModel``, the text-conditional DiT
  (adaLN-single from time, cross-attention to the text tokens in every block); diffusers'
  ``DiTTransformer2DModel`` takes class labels only.
- HDiT lives in ``hdit.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fractalflow.config import JsonConfig
from fractalflow.model.conditioning import Conditioning, text_with_null


@dataclass(frozen=True)
class PeerConfig(JsonConfig):
    """Fields every velocity model's config carries (what the trainer, pipeline and eval read)."""

    in_channels: int = 3
    cond_dim: int = 384
    sample_size: int = 32
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    class_names: tuple[str, ...] = ()

    @property
    def is_class_conditional(self) -> bool:
        return False

    @property
    def downsampling(self) -> int:
        """Pixels per coarsest cell side: image sides must be multiples of it."""
        raise NotImplementedError


class TextConditionedPeer(nn.Module):
    """Base of the peers: the learned null text for classifier-free guidance and the size check."""

    def __init__(self, config: PeerConfig):
        super().__init__()
        self.config = config
        self.null_pooled = nn.Parameter(torch.zeros(config.cond_dim))
        self.null_token = nn.Parameter(torch.zeros(config.cond_dim))

    def text(self, cond: Conditioning, drop: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        return text_with_null(cond, drop, self.null_pooled, self.null_token)

    def check_size(self, height: int, width: int) -> None:
        step = self.config.downsampling
        if height % step or width % step or height < step or width < step:
            raise ValueError(f"image size {height}x{width}: both sides must be positive multiples of {step}")


@dataclass(frozen=True)
class UNetConfig(PeerConfig):
    """Shape of the diffusers UNet peer; the first level has no attention, the others cross-attend."""

    block_out_channels: tuple[int, ...] = (64, 128, 192)
    layers_per_block: int = 1
    attention_head_dim: int = 32
    norm_num_groups: int = 32

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class UNetPeer(TextConditionedPeer):
    """diffusers ``UNet2DConditionModel`` as a rectified-flow velocity model (time scaled to 0..1000)."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        from diffusers import UNet2DConditionModel

        levels = len(config.block_out_channels)
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
        up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
        self.unet = UNet2DConditionModel(
            sample_size=config.sample_size,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block,
            cross_attention_dim=config.cond_dim,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=config.cond_dim,
        )

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, drop: Tensor | None = None) -> Tensor:
        pooled, tokens, mask = self.text(cond, drop)
        return self.unet(
            x,
            t * 1000,
            encoder_hidden_states=tokens.to(x.dtype),
            class_labels=pooled.to(x.dtype),
            encoder_attention_mask=mask,
        ).sample


@dataclass(frozen=True)
class DiTConfig(PeerConfig):
    """Shape of the PixArt-style DiT peer: ``depth`` blocks of ``heads`` x ``head_dim`` on patches."""

    patch_size: int = 4
    depth: int = 6
    heads: int = 3
    head_dim: int = 64

    @property
    def downsampling(self) -> int:
        return self.patch_size


class DiTPeer(TextConditionedPeer):
    """diffusers ``PixArtTransformer2DModel`` (DiT with cross-attention) on pixels. Its adaLN
    takes time only, as in PixArt; the text reaches it through the tokens."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        from diffusers import PixArtTransformer2DModel

        width = config.heads * config.head_dim
        self.dit = PixArtTransformer2DModel(
            num_attention_heads=config.heads,
            attention_head_dim=config.head_dim,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            num_layers=config.depth,
            cross_attention_dim=width,
            sample_size=config.sample_size,
            patch_size=config.patch_size,
            caption_channels=config.cond_dim,
            use_additional_conditions=False,
            interpolation_scale=1,
        )

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, drop: Tensor | None = None) -> Tensor:
        _, tokens, mask = self.text(cond, drop)
        return self.dit(
            x,
            encoder_hidden_states=tokens.to(x.dtype),
            timestep=t * 1000,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            encoder_attention_mask=mask,
        ).sample
