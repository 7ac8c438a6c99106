"""onnxruntime (CPU) against torch on the exported default model, in one run.

Exports the model (``fractalflow export``), then times, interleaved and with the same noise:
one guided transformer forward (a batch of 2: conditional and null rows), the text encoder
on one prompt, and a whole 64 px image (20 Euler steps, guidance 3) through the torch
pipeline and through :class:`~fractalflow.export.runtime.OnnxGenerator`. Prints a table and
writes ``results/onnx-cpu.json`` with the parity and the largest pixel difference.

    python benchmarks/onnx_speed.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from fractalflow import FractalFlowPipeline
from fractalflow.export import export_onnx
from fractalflow.export.onnx import transformer_inputs
from fractalflow.export.runtime import OnnxGenerator
from fractalflow.files import atomic_write_text
from fractalflow.flow.refine import seeded_noise
from fractalflow.hardware import describe_device
from fractalflow.model.conditioning import Conditioning

RESULTS = Path(__file__).parent / "results"
PROMPT = "red heart"


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each (median; default 7)")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.default(device="cpu")
    folder = Path(tempfile.mkdtemp()) / "onnx"
    exported = export_onnx(pipeline, folder)
    generator = OnnxGenerator(folder)
    model = pipeline.model

    forward = transformer_inputs(model, 64, 2, 6, seed=0)
    forward_feeds = {name: value.numpy() for name, value in forward.items()}
    text_torch = partial(pipeline.text_encoder._encode_uncached, [PROMPT])  # uncached: the encoder runs each time
    text_onnx = partial(generator.encode, [PROMPT])

    def forward_torch():
        with torch.no_grad():
            cond = Conditioning(pooled=forward["pooled"], tokens=forward["tokens"], mask=forward["mask"])
            model(forward["x"], forward["t"], cond, forward["drop"])

    noise = seeded_noise([0], 3, "cpu")(64).numpy()
    image_torch = partial(pipeline.generate, [PROMPT], seeds=[0], steps=20, guidance=3.0)
    image_onnx = partial(generator.generate, [PROMPT], noise, steps=20, guidance=3.0)
    pairs = {
        "transformer forward (batch 2)": (forward_torch, partial(generator.transformer.run, None, forward_feeds)),
        "text encoder (1 prompt)": (text_torch, text_onnx),
        "64 px image (20 steps, guidance 3)": (image_torch, image_onnx),
    }
    rows = []
    for name, (with_torch, with_onnx) in pairs.items():
        torch_s = median_seconds(with_torch, args.repeats)
        onnx_s = median_seconds(with_onnx, args.repeats)
        rows.append({"what": name, "torch_s": torch_s, "onnxruntime_s": onnx_s, "speed_up": torch_s / onnx_s})
    torch_pixels = np.asarray(image_torch().images[0]).astype(int)
    onnx_pixels = image_onnx()[0].astype(int)
    print(f"{'what':38s} {'torch s':>9s} {'onnxruntime s':>14s} {'speed-up':>9s}")
    for row in rows:
        print(f"{row['what']:38s} {row['torch_s']:9.4f} {row['onnxruntime_s']:14.4f} {row['speed_up']:8.2f}x")
    pixel_difference = int(np.abs(torch_pixels - onnx_pixels).max())
    print(f"parity (max |onnxruntime - torch|): {exported.parity}; largest pixel difference {pixel_difference}/255")
    payload = {
        "hardware": describe_device("cpu"),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rows": rows,
        "parity": exported.parity,
        "largest_pixel_difference": pixel_difference,
        "files_bytes": exported.files,
    }
    atomic_write_text(RESULTS / "onnx-cpu.json", json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
