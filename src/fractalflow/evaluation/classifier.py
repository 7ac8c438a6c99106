"""A small classifier trained on a class-labelled set's real training split (Fashion-MNIST):
the share of generations it assigns to the class they were asked for is a class-conditional
model's accuracy. Trained on first use and cached, since it is deterministic and cheap."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalflow.config import JsonConfig
from fractalflow.data.dataset import CaptionedImages
from fractalflow.evaluation.convnet import ConvTower, SmallTrainConfig, fit, shift_images
from fractalflow.files import cache_dir
from fractalflow.model.weights import load_model, save_model


@dataclass(frozen=True)
class ClassifierConfig(JsonConfig):
    """Shape of the classifier: input size and channels, CNN stage widths, class names."""

    image_size: int = 32
    in_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128)
    class_names: tuple[str, ...] = ()


class ImageClassifier(nn.Module):
    """CNN classifier over images in [0, 1]; ``forward`` returns logits over ``class_names``."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if not config.class_names:
            raise ValueError("a classifier needs class_names")
        self.config = config
        self.tower = ConvTower(config.in_channels, config.widths)
        self.head = nn.Linear(config.widths[-1], len(config.class_names))

    def forward(self, images: Tensor) -> Tensor:
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        return self.head(self.tower(images * 2.0 - 1.0))

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> Tensor:
        return torch.cat([self(images[i : i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])


def train_classifier(
    dataset: CaptionedImages, train: SmallTrainConfig | None = None, progress: bool = True
) -> ImageClassifier:
    """Fit a classifier to a class-labelled dataset (cross-entropy, shift augmentation)."""
    if dataset.labels is None:
        raise ValueError("the dataset has no class labels")
    train = train or SmallTrainConfig(steps=1500, batch_size=128, max_shift=2)
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    config = ClassifierConfig(
        image_size=dataset.image_size, in_channels=dataset.channels, class_names=dataset.class_names
    )
    classifier = ImageClassifier(config)

    def batch_loss(indices: Tensor) -> Tensor:
        images = shift_images(dataset.pixels(indices).add(1.0).div(2.0), train.max_shift, generator, fill=0.0)
        return F.cross_entropy(classifier(images), dataset.labels[indices])

    return fit(classifier, batch_loss, len(dataset), train, generator, "classifier", progress)


def cached_classifier(
    name: str, dataset: CaptionedImages, train: SmallTrainConfig | None = None, progress: bool = True
) -> ImageClassifier:
    """The classifier for training set ``name``, trained on first use and kept in the user cache."""
    folder = cache_dir() / f"classifier-{name}-{dataset.image_size}px"
    if (folder / "config.json").is_file():
        return load_model(folder, model_class=ImageClassifier)
    classifier = train_classifier(dataset, train, progress=progress)
    save_model(classifier, folder)
    return classifier
