"""Data sources load into CaptionedImages with the right shapes, captions and errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fractalflow.data import load_dataset, load_digits, load_fashion_mnist, load_imagefolder
from fractalflow.data.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR


def write_imagefolder(root, records):
    root.mkdir()
    lines = []
    for name, colour, caption in records:
        Image.new("RGBA", (20, 10), colour).save(root / name)
        lines.append(json.dumps({"file_name": name, "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_imagefolder_reads_captions_and_composites_alpha_on_white(tmp_path):
    write_imagefolder(tmp_path / "set", [("a.png", (255, 0, 0, 255), "red square"), ("b.png", (0, 0, 0, 0), "nothing")])
    data = load_imagefolder(tmp_path / "set", image_size=8)
    assert data.images.shape == (2, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.captions == ["red square", "nothing"]
    assert data.images[0, :, 4, 4].tolist() == [255, 0, 0]
    assert data.images[1].min() == 255  # transparent -> white
    assert torch.allclose(data.pixels(torch.tensor([1])), torch.ones(1, 3, 8, 8))


def test_imagefolder_with_a_broken_metadata_line_names_the_line(tmp_path):
    write_imagefolder(tmp_path / "set", [("a.png", (1, 2, 3, 255), "x")])
    with open(tmp_path / "set" / "metadata.jsonl", "a") as f:
        f.write('{"file_name": "a.png"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:2: expected JSON with 'file_name' and 'text'"):
        load_imagefolder(tmp_path / "set")


def test_unknown_dataset_lists_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_dataset(str(tmp_path / "missing"), 32)
    with pytest.raises(FileNotFoundError, match="metadata.jsonl is missing"):
        load_imagefolder(tmp_path)


def test_digits_are_labelled_and_resized():
    data = load_digits(16)
    assert len(data) == 1797 and data.images.shape[1:] == (1, 16, 16)
    assert data.captions[0] == "zero" and data.labels[0] == 0
    assert data.conditioning(torch.tensor([0, 1])).labels.tolist() == data.labels[:2].tolist()


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_has_ten_named_classes_at_the_requested_size():
    data = load_fashion_mnist("test", image_size=32)
    assert data.images.shape == (10000, 1, 32, 32)
    assert np.bincount(data.labels.numpy()).tolist() == [1000] * 10
    assert data.class_names == FASHION_MNIST_CLASSES
    assert data.captions[0] == FASHION_MNIST_CLASSES[int(data.labels[0])]
