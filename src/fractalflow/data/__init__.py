"""Captioned image datasets and the loaders of the packaged sources."""

from fractalflow.data.dataset import CaptionedImages
from fractalflow.data.sources import load_dataset, load_digits, load_fashion_mnist, load_imagefolder

__all__ = ["CaptionedImages", "load_dataset", "load_digits", "load_fashion_mnist", "load_imagefolder"]
