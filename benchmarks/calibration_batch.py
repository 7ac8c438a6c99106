"""Does calibration count one image's speed-up right when it draws captions in batches?

Early stopping ends a batch only once every image in it has settled, so a batch of 32 runs
more steps under full compute than its images would one at a time. Calibration counts
speed-ups for one image at a time (``cost_batch=1``). This script draws the same training
captions with full compute and with three policies, in batches of 32 and one at a time (early
stop 0.02, the model's sampling defaults). For each it prints the counted speed-up
(``staged_speedup``, what calibration ranks by), the wall-clock ratio of the same draws, and
the forward passes full compute ran. It also times what a sampling step and an image cost
outside the network (the line through unguided one-image generations of 2 and 10 steps,
less a forward pass), the other suspect for counts above wall-clock.

    python benchmarks/calibration_batch.py --captions 32     # ~4 min on 2 cores

Writes ``benchmarks/results/calibration-batch.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference.calibrate import (
    CalibrationSettings,
    ForwardCost,
    PassCost,
    draw,
    staged_speedup,
    training_captions,
)
from fractalflow.model.adaptive import CacheSettings

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
EARLY_STOP = 0.02
LEVEL_1 = dict(depth=1, every=2, start=0.9, extrapolate=True)
POLICIES = {
    "16 steps + level 1": CacheSettings(**LEVEL_1, step_fraction=0.8),
    "14 steps + level 1": CacheSettings(**LEVEL_1, step_fraction=0.7),
    "10 steps": CacheSettings(depth=0, step_fraction=0.5),
}


def timed_draw(pipeline, captions, settings, cache) -> tuple[float, dict]:
    started = time.perf_counter()
    _, reports = draw(pipeline, captions, settings, cache, early_stop=EARLY_STOP)
    return time.perf_counter() - started, reports


def outside_the_network(pipeline: FractalFlowPipeline, prompt: str, repeats: int = 7) -> dict[str, float]:
    """Seconds per step and per image that one unguided image spends outside its forward
    passes, from the median times of whole generations of 2 and 10 steps."""

    def seconds(steps: int) -> float:
        times = []
        for _ in range(repeats + 1):  # the first warms up
            started = time.perf_counter()
            pipeline.generate(prompt, steps=steps, guidance=1.0, scales=(1.0,), early_stop=1e-12)
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:])

    few, many = seconds(2), seconds(10)
    per_step = (many - few) / 8
    forward = ForwardCost.time(pipeline, prompt, 1).forward
    return {"forward_pass": forward, "per_step_outside": per_step - forward, "per_image": few - 2 * per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=32, help="training captions (default: 32)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.default(device="cpu")
    captions = training_captions(args.data, args.captions, 0)
    size = pipeline.config.sample_size
    costs = {size: PassCost.time(pipeline, captions[0], 2, size=size)}  # one guided image, as calibrate
    rows = []
    for batch in (32, 1):
        settings = CalibrationSettings(captions=args.captions, batch_size=batch)
        full_seconds, full = timed_draw(pipeline, captions, settings, "off")
        for name, cache in POLICIES.items():
            seconds, reports = timed_draw(pipeline, captions, settings, cache)
            row = {
                "batch": batch,
                "policy": name,
                "counted": staged_speedup(costs, cache, reports, full),
                "wall_clock": full_seconds / seconds,
                "full_forwards": full[size]["forwards"],
                "policy_forwards": reports[size]["forwards"],
            }
            rows.append(row)
            print(
                f"batch {batch:2d}  {name:20s} counted {row['counted']:.2f}  wall-clock {row['wall_clock']:.2f}  "
                f"forward passes: full {row['full_forwards']:.0f}, policy {row['policy_forwards']:.0f}",
                flush=True,
            )
    outside = outside_the_network(pipeline, captions[0])
    print(
        f"one unguided image: forward pass {outside['forward_pass'] * 1e3:.2f} ms, outside the network "
        f"{outside['per_step_outside'] * 1e3:.2f} ms per step and {outside['per_image'] * 1e3:.2f} ms per image"
    )
    report = {"hardware": describe_device("cpu"), "torch": torch.__version__, "captions": args.captions}
    report.update(rows=rows, outside_the_network=outside)
    path = RESULTS / "calibration-batch.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
