"""Grid jitter: move the network's token grid under the image from one step to the next.

The network reads 4 px patches, merges them 2×2 per level and attends within fixed windows,
and where those edges fall it leaves steps in colour, a faint grid of 8, 16 and 32 px squares
(``benchmarks/seams.py``). :class:`GridJitter` shifts the image by a small offset
``(dy, dx)`` before each velocity evaluation and shifts the velocity back, so the edges fall
somewhere else on every step and the image no longer keeps one grid. Training is untouched: it
is a sampling setting (``GenerationConfig.grid_jitter``), like the random shifts that tiled
samplers use to hide their tile borders.

- The rows and columns a shift opens are filled with the image's mirror image (reflect
  padding). A wrap would carry one border's colour over to the other.
- The pixels the shift moves out of the frame (at most ``amplitude`` px along a border) keep
  the velocity last computed for them: a rectified-flow velocity changes little from one step
  to the next.
- The first evaluation at each size runs unshifted, so every pixel has a velocity.
- The offsets are a fixed sequence (:func:`jitter_offset`, the R2 low-discrepancy sequence),
  the same for every batch and in the ONNX runtime's and the browser's samplers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fractalflow.flow.samplers import Velocity

# the R2 sequence (Roberts 2018): fractional parts of k/phi2 and k/phi2^2, phi2 the plastic number
R2_STEPS = (0.7548776662466927, 0.5698402909980532)


def jitter_offset(call: int, amplitude: int) -> tuple[int, int]:
    """The ``(dy, dx)`` shift in pixels of evaluation number ``call``: each spread evenly over
    the whole pixels in ``[-amplitude, amplitude]``, and ``(0, 0)`` for call 0."""
    dy, dx = (math.floor((2 * amplitude + 1) * ((0.5 + call * step) % 1.0)) - amplitude for step in R2_STEPS)
    return dy, dx


def shifted_window(image: Tensor, dy: int, dx: int, pad: int, mode: str, fill: float = 0.0) -> Tensor:
    """``image`` ``(B, C, S, S)`` seen through a frame moved by ``(-dy, -dx)``: entry ``[i, j]``
    of the result is ``image[i - dy, j - dx]``, the pixels from outside taken from the
    ``mode`` padding (``"reflect"``, or ``"constant"`` ``fill``) of width ``pad >= |dy|, |dx|``."""
    size_y, size_x = image.shape[-2:]
    return padded(image, pad, mode, fill)[..., pad - dy : pad - dy + size_y, pad - dx : pad - dx + size_x]


def padded(images: Tensor, pad: int, mode: str, fill: float = 0.0) -> Tensor:
    """``images`` ``(B, C, S, S)`` with ``pad`` pixels of ``mode`` padding on every side."""
    constant = {"value": fill} if mode == "constant" else {}
    return F.pad(images, (pad, pad, pad, pad), mode=mode, **constant)  # (B, C, S + 2 pad, S + 2 pad)


def seen_part(dy: int, dx: int, size_y: int, size_x: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Where a frame moved by ``(-dy, -dx)`` (:func:`shifted_window`) still shows the image: the
    ``(rows, columns)`` of the image and the same pixels' ``(rows, columns)`` in the frame."""
    image = tuple(slice(max(0, -d), size - max(0, d)) for d, size in ((dy, size_y), (dx, size_x)))
    frame = tuple(slice(max(0, d), size + min(0, d)) for d, size in ((dy, size_y), (dx, size_x)))
    return image, frame  # type: ignore[return-value]


class GridJitter:
    """``GridJitter(velocity, amplitude)(x, t)``: ``velocity`` evaluated on ``x`` shifted by the
    next offset of :func:`jitter_offset`, shifted back; pixels the shift left out keep their
    last velocity. ``amplitude`` 0 is ``velocity`` itself."""

    def __init__(self, velocity: Velocity, amplitude: int):
        if amplitude < 0:
            raise ValueError(f"grid_jitter={amplitude} must be >= 0")
        self.velocity = velocity
        self.amplitude = amplitude
        self.calls = 0
        self.last: Tensor | None = None  # the velocity of the previous evaluation, image frame

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.last is None or self.last.shape != x.shape:  # a new trajectory or a new scale
            self.calls, self.last = 0, None
        amplitude = min(self.amplitude, x.shape[-1] - 1, x.shape[-2] - 1)  # reflect padding's limit
        dy, dx = jitter_offset(self.calls, amplitude)
        self.calls += 1
        if self.last is None or (dy, dx) == (0, 0):
            self.last = self.velocity(x, t)
            return self.last
        moved = self.velocity(shifted_window(x, dy, dx, amplitude, "reflect"), t)
        image_part, frame_part = seen_part(dy, dx, x.shape[-2], x.shape[-1])
        self.last = self.last.clone()  # the pixels the frame left out keep their last velocity
        self.last[..., image_part[0], image_part[1]] = moved[..., frame_part[0], frame_part[1]]
        return self.last


def shift_each(images: Tensor, offsets: Tensor, pad: int, fill: float | None = None) -> Tensor:
    """``images`` ``(B, C, S, S)``, image b moved by ``offsets[b] = (dy, dx)`` with ``|dy|, |dx| <=
    pad``, mirror-filled (or with the constant ``fill``): translation augmentation. For a network
    to be sampled with grid jitter, it shows the picture at every place of the token grid
    (``TrainConfig.shift_augment``)."""
    mode, value = ("reflect", 0.0) if fill is None else ("constant", fill)
    size_y, size_x = images.shape[-2:]
    moved = [  # the batch padded once, each image's window sliced out of it
        image[:, pad - dy : pad - dy + size_y, pad - dx : pad - dx + size_x]
        for image, (dy, dx) in zip(padded(images, pad, mode, value), offsets.tolist())
    ]
    return torch.stack(moved)  # (B, C, S, S)
