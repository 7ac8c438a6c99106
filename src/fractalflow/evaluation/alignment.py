"""The prompt-alignment yardstick: a small image-text contrastive encoder.

The image tower is a small CNN trained from scratch on the emoji training split; the text
tower is the frozen MiniLM (its pooled vector) followed by a trained projection. A
generated image is *aligned* when its own caption ranks among the top k of the held-out
captions by cosine similarity; the share that misses the top 5 is the hallucination rate.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalflow.config import JsonConfig
from fractalflow.data.dataset import CaptionedImages
from fractalflow.evaluation.convnet import ConvTower, SmallTrainConfig, fit, shift_images
from fractalflow.model.text import TextEncoder
from fractalflow.model.weights import load_model


@dataclass(frozen=True)
class AlignmentConfig(JsonConfig):
    """Shape of the alignment encoder: CNN stage widths, embedding size, text feature size."""

    image_size: int = 64
    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128, 256)
    embed_dim: int = 256
    text_dim: int = 384
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"


class AlignmentEncoder(nn.Module):
    """Embeds images (in [0, 1]) and MiniLM pooled text features into one unit-norm space."""

    config_class = AlignmentConfig

    def __init__(self, config: AlignmentConfig):
        super().__init__()
        self.config = config
        self.image_tower = ConvTower(config.in_channels, config.widths)
        self.image_proj = nn.Linear(config.widths[-1], config.embed_dim)
        self.text_proj = nn.Sequential(
            nn.Linear(config.text_dim, config.text_dim), nn.GELU(), nn.Linear(config.text_dim, config.embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def embed_images(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(
                f"need (B, {self.config.in_channels}, H, W) images in [0, 1], got shape {tuple(images.shape)}"
            )
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        features = self.image_tower(images * 2.0 - 1.0)
        return F.normalize(self.image_proj(features), dim=-1)

    def embed_texts(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, images: Tensor, pooled: Tensor) -> Tensor:
        """Similarity logits ``(B_images, B_texts)``, scaled by the learned temperature."""
        return self.logit_scale.exp().clamp(max=100.0) * self.embed_images(images) @ self.embed_texts(pooled).T


def train_alignment(
    dataset: CaptionedImages,
    text_encoder: TextEncoder,
    config: AlignmentConfig | None = None,
    train: SmallTrainConfig | None = None,
    progress: bool = True,
) -> AlignmentEncoder:
    """Train the encoder on ``dataset`` with the symmetric InfoNCE loss; captions are drawn
    as for generation training (several phrasings per image)."""
    config, train = config or AlignmentConfig(), train or SmallTrainConfig()
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    caption_rng = random.Random(train.seed)
    encoder = AlignmentEncoder(config)

    def batch_loss(indices: Tensor) -> Tensor:
        images = dataset.pixels(indices, config.image_size).add(1.0).div(2.0)
        pooled = text_encoder.encode(dataset.sample_captions(indices, caption_rng)).pooled
        logits = encoder(shift_images(images, train.max_shift, generator), pooled)
        labels = torch.arange(len(indices))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return fit(encoder, batch_loss, len(dataset), train, generator, "alignment", progress)


@torch.no_grad()
def image_embeddings(encoder: AlignmentEncoder, images: Tensor, batch_size: int = 256) -> Tensor:
    """Unit-norm embeddings of ``(N, C, H, W)`` images in [0, 1], computed in batches."""
    return torch.cat([encoder.embed_images(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def caption_ranks(encoder: AlignmentEncoder, images: Tensor, own: Tensor, caption_pooled: Tensor) -> Tensor:
    """For each image (``(N, C, H, W)`` in [0, 1]), the rank (0 = best) of its own caption
    ``own[i]`` (an index into the candidate captions ``caption_pooled``) by similarity."""
    return ranks_of_own_captions(image_embeddings(encoder, images), own, encoder.embed_texts(caption_pooled))


def ranks_of_own_captions(image_embedded: Tensor, own: Tensor, caption_embedded: Tensor) -> Tensor:
    """:func:`caption_ranks` from embeddings already computed."""
    similarity = image_embedded @ caption_embedded.T
    return (similarity > similarity.gather(1, own[:, None])).sum(dim=1)


def alignment_scores(ranks: Tensor) -> dict[str, float]:
    """Top-1 / top-5 retrieval accuracy and the hallucination rate (own caption not in the top 5)."""
    ranks = ranks.double()
    top5 = (ranks < 5).double().mean().item()
    return {"top1": (ranks < 1).double().mean().item(), "top5": top5, "hallucination_rate": 1.0 - top5}


def caption_index(captions: list[str]) -> tuple[list[str], Tensor]:
    """The distinct captions (sorted) and, for each of ``captions``, its index among them."""
    distinct = sorted(set(captions))
    position = {caption: i for i, caption in enumerate(distinct)}
    return distinct, torch.tensor([position[c] for c in captions])


def shipped_alignment_folder() -> Path:
    """The alignment encoder shipped in the package (trained by ``scripts/train_alignment.py``)."""
    return Path(__file__).resolve().parents[1] / "weights" / "alignment"


def load_alignment_encoder(folder: str | Path | None = None) -> AlignmentEncoder:
    return load_model(folder or shipped_alignment_folder(), model_class=AlignmentEncoder)
