"""Text to image from an exported ONNX folder with onnxruntime and numpy only (no torch).

:class:`OnnxGenerator` follows the torch pipeline's plain path step for step: one scale at
the exported size; the model's sampler (Euler or Adams-Bashforth 2) from t = 1 to 0 on its
time grid (even, or warped by its ``time_shift``); classifier-free guidance with the
conditional and null rows in one batch, within the model's guidance interval; its grid
jitter. With the same noise it draws the same image; the browser's generator is written
after it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fractalflow.export.onnx import MANIFEST_FILE, TEXT_ENCODER_FILE, TRANSFORMER_FILE, open_session

RUNTIME_SAMPLERS = ("euler", "ab2")  # as fractalflow.flow.samplers' euler_step and AdamsBashforth2


class OnnxGenerator:
    """``OnnxGenerator(folder).generate(prompts, noise)`` -> ``(B, S, S, 3)`` uint8 images.

    ``noise``: ``(B, C, S, S)`` float32 standard normal, one row per prompt (the torch
    pipeline's ``seeded_noise`` gives the same draws as its ``generate(seeds=...)``).
    """

    def __init__(self, folder: str | Path, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        from tokenizers import Tokenizer

        from fractalflow.generation import GenerationConfig

        self.folder = Path(folder)
        if not (self.folder / MANIFEST_FILE).is_file():
            raise FileNotFoundError(f"{folder} is not an ONNX export: {MANIFEST_FILE} is missing (fractalflow export)")
        self.manifest = json.loads((self.folder / MANIFEST_FILE).read_text())
        self.size = int(self.manifest["size"])
        self.defaults = GenerationConfig.for_model(self.folder)
        if self.defaults.sampler not in RUNTIME_SAMPLERS:
            raise ValueError(
                f"{folder}: sampler {self.defaults.sampler!r} is not in the ONNX runtime; it has {RUNTIME_SAMPLERS}"
            )
        self.transformer = open_session(self.folder / TRANSFORMER_FILE, providers)
        self.text_encoder = open_session(self.folder / TEXT_ENCODER_FILE, providers)
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(self.manifest["max_length"]))
        self.tokenizer.no_padding()

    def encode(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """The transformer's text inputs: pooled ``(B, 384)``, tokens ``(B, L, 384)``, mask ``(B, L)``."""
        encodings = self.tokenizer.encode_batch(prompts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(prompts), length), dtype=np.int64)
        mask = np.zeros((len(prompts), length), dtype=bool)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = True
        tokens, pooled = self.text_encoder.run(None, {"ids": ids, "mask": mask})
        return {"pooled": pooled, "tokens": tokens * mask[..., None], "mask": mask}

    def velocity(self, text: dict[str, np.ndarray], guidance: float, interval: tuple[float, float] | None = None):
        """``v(x, t)``, guided: conditional and null rows in one batch unless ``guidance`` is 1, or
        ``t`` is outside the guidance ``interval`` (then the conditional rows alone). The text
        feeds are built once here, not at every step."""
        batch = len(text["pooled"])
        single = {**text, "drop": np.zeros(batch, dtype=bool)}
        doubled = {name: np.concatenate([value, value]) for name, value in text.items()}
        doubled["drop"] = np.arange(2 * batch) >= batch

        def velocity(x: np.ndarray, t: float) -> np.ndarray:
            if guidance == 1.0 or (interval is not None and not interval[0] <= t <= interval[1]):
                return self.transformer.run(None, {**single, "x": x, "t": np.full(batch, t, dtype=np.float32)})[0]
            times = np.full(2 * batch, t, dtype=np.float32)
            out = self.transformer.run(None, {**doubled, "x": np.concatenate([x, x]), "t": times})[0]
            conditional, unconditional = np.split(out, 2)
            return unconditional + guidance * (conditional - unconditional)

        return velocity

    def generate(
        self, prompts: list[str], noise: np.ndarray, steps: int | None = None, guidance: float | None = None
    ) -> np.ndarray:
        steps = self.defaults.steps if steps is None else steps
        guidance = self.defaults.guidance if guidance is None else guidance
        expected = (len(prompts), self.transformer.get_inputs()[0].shape[1], self.size, self.size)
        if noise.shape != expected:
            raise ValueError(f"noise of shape {noise.shape}: this export takes {expected} for {len(prompts)} prompt(s)")
        velocity = self.velocity(self.encode(prompts), guidance, self.defaults.guidance_interval)
        if self.defaults.grid_jitter:
            velocity = grid_jitter(velocity, self.defaults.grid_jitter)
        times = time_grid(steps, self.defaults.time_shift)
        x = noise.astype(np.float32)
        previous = None  # Adams-Bashforth 2's last velocity and step size
        for t, t_next in zip(times[:-1], times[1:]):
            v = velocity(x, float(t))
            h = t_next - t
            moved = v
            if self.defaults.sampler == "ab2" and previous is not None:
                v_prev, h_prev = previous
                moved = v + h / (2 * h_prev) * (v - v_prev)
            previous = (v, h)
            x = x + h * moved
        pixels = np.clip((x + 1) * 127.5, 0, 255).round().astype(np.uint8)  # [-1, 1] -> [0, 255]
        return pixels.transpose(0, 2, 3, 1)  # (B, C, S, S) -> (B, S, S, C)


def grid_jitter(velocity, amplitude: int):
    """:class:`fractalflow.flow.jitter.GridJitter` for numpy velocities ``v(x, t)`` of one size:
    ``x`` seen through a frame moved by the next offset of ``jitter_offset`` (the rows it opens
    mirrored), the velocity moved back; pixels the frame left out keep their last velocity."""
    from fractalflow.flow.jitter import jitter_offset, seen_part

    calls, last = 0, None

    def jittered(x: np.ndarray, t: float) -> np.ndarray:
        nonlocal calls, last
        pad = min(amplitude, x.shape[-1] - 1)
        dy, dx = jitter_offset(calls, pad)
        calls += 1
        if last is None or (dy, dx) == (0, 0):
            last = velocity(x, t)
            return last
        size = x.shape[-1]
        padding = ((0, 0), (0, 0), (pad, pad), (pad, pad))
        moved = np.pad(x, padding, mode="reflect")[..., pad - dy : pad - dy + size, pad - dx : pad - dx + size]
        out = velocity(np.ascontiguousarray(moved), t)
        (rows, columns), (frame_rows, frame_columns) = seen_part(dy, dx, size, size)
        last = last.copy()  # the pixels the frame left out keep their last velocity
        last[..., rows, columns] = out[..., frame_rows, frame_columns]
        return last

    return jittered


def time_grid(steps: int, shift: float) -> np.ndarray:
    """``steps + 1`` float32 flow times from 1 to 0, warped by ``shift``, as
    :func:`fractalflow.flow.samplers.time_grid` computes them."""
    t = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32)
    shift = np.float32(shift)
    return shift * t / (1 + (shift - 1) * t)


def browser_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The noise the web UI draws on the user's device for ``seed`` (``seededNoise`` in
    ``web/src/local/sampler.ts``: mulberry32 and Box-Muller), so a browser image can be
    redrawn here: ``pipeline.generate(prompt, latents=torch.from_numpy(browser_noise(...)))``."""
    count = int(np.prod(shape))
    state = seed & 0xFFFFFFFF
    mask = 0xFFFFFFFF

    def uniform() -> float:
        nonlocal state
        state = (state + 0x6D2B79F5) & mask
        z = state
        z = ((z ^ (z >> 15)) * (z | 1)) & mask
        z = (z ^ ((z + (((z ^ (z >> 7)) * (z | 61)) & mask)) & mask)) & mask
        return (((z ^ (z >> 14)) & mask) + 0.5) / 4294967296

    out = np.empty(count + count % 2, dtype=np.float64)
    for i in range(0, count, 2):
        radius = math.sqrt(-2 * math.log(uniform()))
        angle = 2 * math.pi * uniform()
        out[i], out[i + 1] = radius * math.cos(angle), radius * math.sin(angle)
    return out[:count].astype(np.float32).reshape(shape)
