"""Which CPU execution modes pay for the shipped default model: bf16 autocast, int8 dynamic
quantization and ``torch.compile`` against plain fp32, measured in the same run.

For each mode: seconds per 64 px image (20 Euler steps, guidance 3, one scale) at batch 1
and batch 8 (median of 3 after a warm-up, which also compiles), and how far its images are
from the fp32 ones for the same seeds (mean absolute difference in 0..255 levels).

    python benchmarks/cpu_modes.py     # ~25 min on 2 CPU cores (compiling is most of it); writes results/cpu-modes.json
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fractalflow import FractalFlowPipeline
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference import InferenceEngine, InferenceProfile

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["red heart", "bell icon", "cat face, twemoji style", "rocket", "sun", "green tree", "house", "star"]
MODES = {
    "fp32 (baseline)": InferenceProfile(name="fp32"),
    "bf16 autocast": InferenceProfile(name="bf16", dtype="bf16"),
    "int8 dynamic": InferenceProfile(name="int8", quantize="int8"),
    "fp32 + torch.compile": InferenceProfile(name="compile", compile=True),
    "bf16 + torch.compile": InferenceProfile(name="compile-bf16", dtype="bf16", compile=True),
}


def seconds_per_image(pipeline: FractalFlowPipeline, batch: int, repeats: int = 3) -> float:
    times = []
    for run in range(repeats + 1):
        begin = time.perf_counter()
        pipeline.generate(PROMPTS[:batch], seed=run, size=64, steps=20)
        if run:
            times.append((time.perf_counter() - begin) / batch)
    return statistics.median(times)


def main() -> None:
    rows, reference = [], None
    for name, profile in MODES.items():
        print(f"== {name}", flush=True)
        pipeline = FractalFlowPipeline.default(device="cpu")
        InferenceEngine(profile=profile, pipeline=pipeline)  # applies the mode to the pipeline in place
        pixels = np.stack([np.asarray(i, dtype=np.float64) for i in pipeline.generate(PROMPTS, seed=0).images])
        reference = pixels if reference is None else reference
        rows.append(
            {
                "mode": name,
                "profile": profile.to_dict(),
                "seconds_per_image_batch1": seconds_per_image(pipeline, 1),
                "seconds_per_image_batch8": seconds_per_image(pipeline, 8),
                "mean_abs_difference_from_fp32": float(np.abs(pixels - reference).mean()),
            }
        )
    base = rows[0]
    print(f"\n{'mode':22s} {'s/img b1':>8s} {'x base':>6s} {'s/img b8':>8s} {'x base':>6s} {'|diff| 0-255':>12s}")
    for row in rows:
        b1, b8 = row["seconds_per_image_batch1"], row["seconds_per_image_batch8"]
        print(
            f"{row['mode']:22s} {b1:8.3f} {b1 / base['seconds_per_image_batch1']:6.2f} {b8:8.3f} "
            f"{b8 / base['seconds_per_image_batch8']:6.2f} {row['mean_abs_difference_from_fp32']:12.2f}"
        )
    path = RESULTS / "cpu-modes.json"
    report = {"hardware": describe_device("cpu"), "torch": torch.__version__, "rows": rows}
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
