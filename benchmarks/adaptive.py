"""Step caching (AdaptiveDepth) against full compute: speed and quality, one run.

For each CacheSettings, the shipped model samples one image per held-out caption (64 px,
Euler, 20 steps, guidance 3, the same seeds) with ``fractalflow eval``'s metrics, and one
image at a time for the latency (median of 3 after a warm-up). The first row is full
compute (no caching), measured in the same run.

    python benchmarks/adaptive.py --n 661     # ~12 min on 2 idle cores

Prints a table and writes ``benchmarks/results/adaptive-cpu.json``. (A first measurement
for issue 15: the schedule is fixed here; calibration and ``generate(adaptive=...)`` come next.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.concepts import asked_concept_images
from fractalflow.evaluation.evaluate import EvalSettings, eval_rows, evaluate
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.model.adaptive import AdaptiveDepth, CacheSettings

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CASES = [None, CacheSettings(every=2), CacheSettings(every=3), CacheSettings(depth=2, every=2)]


def caching(pipeline: FractalFlowPipeline, settings: CacheSettings | None):
    return contextlib.nullcontext() if settings is None else AdaptiveDepth(pipeline.model, settings)


def latency(pipeline: FractalFlowPipeline, settings: CacheSettings | None) -> float:
    """Median seconds for one 64 px image, 20 steps, after a warm-up."""
    times = []
    for seed in range(4):
        with caching(pipeline, settings):
            started = time.perf_counter()
            pipeline.generate("red heart", steps=20, seed=seed)
            times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=661, help="held-out captions to evaluate (default: 661)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    args = parser.parse_args()
    settings = EvalSettings(num_images=args.n, size=64, batch_size=64)
    held_out = load_emoji(args.data, image_size=64, split="eval")
    gallery = asked_concept_images(args.data, held_out, eval_rows(args.n, len(held_out)), 64)
    alignment = load_alignment_encoder()
    pipeline = FractalFlowPipeline.default(device="cpu")
    rows = []
    for case in CASES:
        label = "full compute" if case is None else f"depth {case.depth}, every {case.every}"
        print(f"== {label}", flush=True)
        seconds = latency(pipeline, case)
        with caching(pipeline, case):
            report = evaluate(pipeline, held_out, settings, alignment, gallery=gallery)
        rows.append(
            {
                "case": label,
                "settings": None if case is None else case.to_dict(),
                "latency_s": seconds,
                "seconds_per_image": report["seconds_per_image"],
                "metrics": report["metrics"],
            }
        )
    base = rows[0]
    print(
        f"\n{'case':<22} {'1 image s':>9} {'speed-up':>8} {'batch s/img':>11} {'speed-up':>8} "
        f"{'FD':>7} {'FD x':>6} {'top5':>6} {'concept':>7}"
    )
    for row in rows:
        m = row["metrics"]
        row["speedup_latency"] = base["latency_s"] / row["latency_s"]
        row["speedup_batch"] = base["seconds_per_image"] / row["seconds_per_image"]
        row["fd_ratio"] = m["fd_effnet_l0"] / base["metrics"]["fd_effnet_l0"]
        print(
            f"{row['case']:<22} {row['latency_s']:9.3f} {row['speedup_latency']:8.2f} "
            f"{row['seconds_per_image']:11.4f} {row['speedup_batch']:8.2f} {m['fd_effnet_l0']:7.1f} "
            f"{row['fd_ratio']:6.3f} {m['alignment_top5']:6.3f} {m['concept_retrieval']:7.3f}"
        )
    report = {"hardware": describe_device("cpu"), "torch": torch.__version__, "n": args.n, "rows": rows}
    path = RESULTS / "adaptive-cpu.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
