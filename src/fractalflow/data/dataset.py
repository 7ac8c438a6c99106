"""An in-memory set of captioned images, the form every data source is loaded into."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from fractalflow.model.conditioning import Conditioning


@dataclass
class CaptionedImages:
    """Images with a caption each and, for class-labelled sets, a class id each.

    ``images``: ``(N, C, S, S)`` uint8. ``labels``: ``(N,)`` int64 indices into
    ``class_names`` (class-labelled sets only). ``other_sizes``: the same images stored
    at other resolutions, ``{size: (N, C, size, size) uint8}``, used in place of resizing.
    ``weights``: ``(N,)`` relative probabilities with which training draws each image
    (``None``: uniform).
    """

    images: Tensor
    captions: list[str]
    labels: Tensor | None = None
    class_names: tuple[str, ...] = ()
    other_sizes: dict[int, Tensor] = field(default_factory=dict)
    weights: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.captions) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.weights is not None and (len(self.weights) != len(self.images) or not bool((self.weights >= 0).all())):
            raise ValueError(f"weights must be {len(self.images)} non-negative numbers, one per image")
        if len(self.images) == 0:
            raise ValueError("the dataset is empty")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def pixels(self, indices: Tensor, size: int | None = None) -> Tensor:
        """Images ``indices`` as float in [-1, 1] at ``size``: the stored copy of that size,
        else resized from the smallest stored copy that is larger (or the largest)."""
        stored = {self.image_size: self.images, **self.other_sizes}
        if size is None or size in stored:
            source = stored[size or self.image_size]
        else:
            larger = [s for s in stored if s > size]
            source = stored[min(larger) if larger else max(stored)]
        x = source[indices].float().div(127.5).sub(1.0)
        if size is not None and size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x

    def sample_captions(self, indices: Tensor, rng: random.Random) -> list[str]:
        """Captions to train on for ``indices``; sets with several phrasings draw one with ``rng``."""
        return [self.captions[i] for i in indices.tolist()]

    def conditioning(self, indices: Tensor) -> Conditioning:
        if self.labels is None:
            raise ValueError("this dataset has no class labels; text conditioning needs a text encoder")
        return Conditioning(labels=self.labels[indices])

    def subset(self, indices: Tensor) -> CaptionedImages:
        return CaptionedImages(
            images=self.images[indices],
            captions=[self.captions[i] for i in indices.tolist()],
            labels=None if self.labels is None else self.labels[indices],
            class_names=self.class_names,
            other_sizes={size: images[indices] for size, images in self.other_sizes.items()},
            weights=None if self.weights is None else self.weights[indices],
        )

    def draw(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` random image indices: uniform, or by ``weights`` (with replacement)."""
        if self.weights is None:
            return torch.randint(len(self), (count,), generator=generator)
        return torch.multinomial(self.weights, count, replacement=True, generator=generator)


def square_resize(images: Tensor, size: int) -> Tensor:
    """uint8 ``(N, C, H, W)`` -> uint8 ``(N, C, size, size)`` (area-averaged, antialiased)."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)
