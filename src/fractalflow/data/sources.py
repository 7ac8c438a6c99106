"""Loaders for the packaged data sources: Fashion-MNIST (Debian), sklearn digits, and any
``imagefolder`` with a ``metadata.jsonl`` (the Hugging Face convention)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fractalflow.data.dataset import CaptionedImages, square_resize

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def load_fashion_mnist(split: str = "train", image_size: int = 32, root: Path = FASHION_MNIST_DIR) -> CaptionedImages:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``; captions are class names."""
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split={split!r}; allowed: {sorted(prefixes)}")
    images_path = root / f"{prefixes[split]}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefixes[split]}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {images_path}; install the Debian package "
            "'dataset-fashion-mnist' (make install does)"
        )
    images = torch.from_numpy(_read_idx(images_path, 16).reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(_read_idx(labels_path, 8).astype(np.int64))
    return CaptionedImages(
        images=square_resize(images, image_size),
        captions=[FASHION_MNIST_CLASSES[i] for i in labels.tolist()],
        labels=labels,
        class_names=FASHION_MNIST_CLASSES,
    )


def load_digits(image_size: int = 16) -> CaptionedImages:
    """The 1,797 8×8 scikit-learn digits, upscaled: a tiny set for fast tests."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy((digits.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return CaptionedImages(
        images=square_resize(images, image_size),
        captions=[DIGIT_CLASSES[i] for i in labels.tolist()],
        labels=labels,
        class_names=DIGIT_CLASSES,
    )


def load_imagefolder(root: str | Path, image_size: int = 64, channels: int = 3) -> CaptionedImages:
    """A folder of images with ``metadata.jsonl`` lines ``{"file_name": ..., "text": ...}``.

    Images are centre-cropped to a square, composited on white if they have alpha, and
    resized to ``image_size``.
    """
    root = Path(root)
    metadata = root / "metadata.jsonl"
    if not metadata.is_file():
        raise FileNotFoundError(f"{root} is not an imagefolder: {metadata} is missing")
    images, captions = [], []
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"channels={channels}; allowed: 1 or 3")
    for line_number, line in enumerate(metadata.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            file_name, caption = record["file_name"], record["text"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ValueError(f"{metadata}:{line_number}: expected JSON with 'file_name' and 'text' ({error})") from None
        images.append(_load_square(root / file_name, image_size, mode))
        captions.append(str(caption))
    if not images:
        raise ValueError(f"{metadata} lists no images")
    array = np.stack(images)
    tensor = torch.from_numpy(array if array.ndim == 4 else array[..., None]).permute(0, 3, 1, 2).contiguous()
    return CaptionedImages(images=tensor, captions=captions)


def _load_square(path: Path, size: int, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image.alpha_composite(rgba)
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).convert(mode)
        return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))


def load_dataset(spec: str, image_size: int, split: str = "train") -> CaptionedImages:
    """A dataset by name (``fashion-mnist``, ``digits``), a prepared emoji folder, or an imagefolder."""
    if spec == "fashion-mnist":
        return load_fashion_mnist(split, image_size)
    if spec == "digits":
        return load_digits(image_size)
    path = Path(spec)
    if (path / "records.jsonl").is_file():
        from fractalflow.data.emoji import load_emoji

        return load_emoji(path, image_size, split)
    if path.is_dir():
        return load_imagefolder(path, image_size)
    raise ValueError(f"unknown dataset {spec!r}: give 'fashion-mnist', 'digits', or a folder with metadata.jsonl")
