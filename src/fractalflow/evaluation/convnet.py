"""The small CNN behind the evaluation encoders (alignment image tower, Fashion-MNIST classifier)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fractalflow.config import JsonConfig
from fractalflow.flow.jitter import shift_each
from fractalflow.training.trainer import warmup_cosine


@dataclass(frozen=True)
class SmallTrainConfig(JsonConfig):
    """How an evaluation encoder is trained: AdamW, warm-up + cosine, shift augmentation."""

    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_shift: int = 4
    seed: int = 0


class ConvTower(nn.Module):
    """Stride-2 conv stages (conv, GroupNorm, SiLU, twice each), then global average pooling:
    ``(B, in_channels, H, W)`` in [-1, 1] -> ``(B, widths[-1])``."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for width_in, width in zip((in_channels, *widths[:-1]), widths):
            layers += [
                nn.Conv2d(width_in, width, 3, stride=2, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(8, width),
                nn.SiLU(),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images).mean(dim=(2, 3))


def shift_images(images: Tensor, max_shift: int, generator: torch.Generator, fill: float = 1.0) -> Tensor:
    """Translate each image by up to ``max_shift`` px (augmentation), filling with ``fill``."""
    if max_shift == 0:
        return images
    corners = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)  # (B, 2): crop corners
    return shift_each(images, max_shift - corners, max_shift, fill)


def fit(
    module: nn.Module,
    batch_loss: Callable[[Tensor], Tensor],
    dataset_size: int,
    train: SmallTrainConfig,
    generator: torch.Generator,
    desc: str,
    progress: bool = True,
) -> nn.Module:
    """AdamW with warm-up + cosine over ``train.steps`` random batches (indices without
    replacement within a batch); ``batch_loss(indices)`` gives each batch's loss."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(train.warmup_steps, train.steps, floor=0.0))
    module.train()
    bar = tqdm(range(train.steps), desc=desc, disable=not progress)
    for _ in bar:
        loss = batch_loss(torch.randperm(dataset_size, generator=generator)[: train.batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return module.eval()
