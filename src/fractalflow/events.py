"""The one progress event type, shared by the Python callback, the server and the UI."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor


@dataclass
class ProgressEvent:
    """Progress of one generation: ``stage`` name, ``step`` of ``total`` (1-based),
    ``elapsed`` seconds, ``preview``: the current clean-image estimate,
    ``(B, C, H, W)`` in [-1, 1] on the CPU, and ``blocks_run``: transformer blocks run so far
    (fewer than steps × blocks when ``adaptive`` reuses work; None where not counted)."""

    stage: str
    step: int
    total: int
    elapsed: float
    preview: Tensor
    blocks_run: int | None = None

    def preview_images(self) -> list[Image.Image]:
        return tensor_to_images(self.preview)


def tensor_to_images(images: Tensor) -> list[Image.Image]:
    """``(B, C, H, W)`` in [-1, 1] -> PIL images (``L`` for one channel, ``RGB`` for three)."""
    array = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    if array.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in array]
    return [Image.fromarray(a, mode="RGB") for a in array]


def images_to_tensor(images: list[Image.Image]) -> Tensor:
    """PIL images (``L`` or ``RGB``, one size) -> uint8 ``(B, C, H, W)``."""
    arrays = [np.asarray(image) for image in images]
    return torch.from_numpy(np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])).permute(0, 3, 1, 2)
