"""AdaptiveDepth against full compute: wall-clock and quality of the calibrated policies, one run.

The shipped model samples one image per held-out caption (its own sampling defaults, the same
seeds) under the ``cpu`` profile with early stopping (0.02), at 64 px (``standard``)
and at 128 px (``high``: refined from 64 px), with ``adaptive`` off, at each calibrated
target (the model's ``adaptive.json``, from ``fractalflow calibrate`` on training captions)
and, as the plain way to spend less, with fewer sampling steps. Each row has the
``fractalflow eval`` metrics, the seconds per image of that eval (batches of 32) and the
median seconds of one image (8 draws after a warm-up).

    python benchmarks/adaptive.py --n 661 --n-high 200   # ~40 min on 2 idle cores

Prints a table, writes ``benchmarks/results/adaptive-cpu.json`` and the pictures
``docs/images/adaptive.png`` and ``adaptive-128.png`` (same seeds; columns off, each
target calibrated for that size and, where none reaches 3x, 3x as it would be drawn:
``UNSHIPPED_3X``). ``--pictures-only`` draws the pictures alone (about a minute).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.concepts import asked_concept_images
from fractalflow.evaluation.evaluate import EvalSettings, eval_rows, evaluate
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference import InferenceEngine
from fractalflow.model.adaptive import CacheSettings
from fractalflow.model.adaptive_policies import AdaptivePolicies

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
EARLY_STOP = 0.02
PICTURE_PROMPTS = ["red heart", "cat face, twemoji style", "rocket", "bell icon, notification"]
# The issue's picture has a 3x column, but no candidate reaches 3x within calibration's error
# ceiling, so no model ships a 3x policy: the column shows what 3x would take, 5 of 20 plain
# steps (about 3x for one image; held-out FD +31 %, top-5 -0.06: docs/benchmarks.md, stop 38).
UNSHIPPED_3X = CacheSettings(depth=0, step_fraction=0.25)


def cases(targets: list[float]) -> list[tuple[str, dict]]:
    """(label, GenerationConfig fields) of one resolution: off, each target, fewer steps."""
    rows = [("off", {})]
    rows += [(f"adaptive {target:g}x", {"adaptive": target}) for target in targets]
    rows += [(f"{steps} steps, off", {"steps": steps}) for steps in (14, 10, 7)]
    return rows


def latency(engine: InferenceEngine, settings: EvalSettings) -> float:
    """Median seconds for one image (4 prompts, 2 seeds each) after a warm-up."""
    engine.generate(PICTURE_PROMPTS[0], seed=99, config=settings.generation)
    times = []
    for prompt in PICTURE_PROMPTS:
        for seed in range(2):
            started = time.perf_counter()
            engine.generate(prompt, seed=seed, config=settings.generation)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def picture(engine: InferenceEngine, resolution: str, at_size: AdaptivePolicies, path: Path) -> None:
    """One row per prompt, one column per policy of ``at_size`` (off, then each target, then 3x
    as :data:`UNSHIPPED_3X` where no policy reaches it, refined as the fastest policy), the same seed."""
    targets = sorted(at_size.policies)
    columns: list = ["off", *targets]
    if max(targets, default=1.0) < 3.0:
        fastest = at_size.policies[max(targets)] if targets else None
        columns.append(replace(UNSHIPPED_3X, refine_steps=fastest and fastest.refine_steps))
    tiles = [
        engine.generate(prompt, seed=7, resolution=resolution, early_stop=EARLY_STOP, adaptive=adaptive).images[0]
        for prompt in PICTURE_PROMPTS
        for adaptive in columns
    ]
    size = tiles[0].width
    sheet = Image.new("RGB", (len(columns) * size, len(PICTURE_PROMPTS) * size), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % len(columns)) * size, (i // len(columns)) * size))
    zoom = max(1, 128 // size)
    sheet.resize((sheet.width * zoom, sheet.height * zoom), resample=Image.Resampling.NEAREST).save(path)


def draw_pictures(engine: InferenceEngine, policies: AdaptivePolicies) -> None:
    """``docs/images/adaptive.png`` (64 px) and ``adaptive-128.png``, each with the policies of its size."""
    for resolution, size, name in (("standard", 64, "adaptive.png"), ("high", 128, "adaptive-128.png")):
        picture(engine, resolution, policies.for_size(size), REPO / "docs" / "images" / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=661, help="held-out captions at 64 px (default: 661)")
    parser.add_argument("--n-high", type=int, default=200, help="held-out captions at 128 px (default: 200)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--pictures-only", action="store_true", help="draw the pictures, measure nothing")
    args = parser.parse_args()
    engine = InferenceEngine(profile="cpu")
    policies = engine.pipeline.adaptive_policies
    if policies is None:
        raise SystemExit("the shipped model has no adaptive.json: run 'fractalflow calibrate' first")
    if args.pictures_only:
        draw_pictures(engine, policies)
        return
    defaults = engine.pipeline.generation_config  # the model's sampling, as calibrate used it
    alignment = load_alignment_encoder()
    rows = []
    for resolution, count in (("standard", args.n), ("high", args.n_high)):
        size = 64 if resolution == "standard" else 128
        targets = sorted(policies.for_size(size).policies)  # calibrated at this size, if it was
        held_out = load_emoji(args.data, image_size=size, split="eval")
        gallery = asked_concept_images(args.data, held_out, eval_rows(count, len(held_out)), size)
        for label, fields in cases(targets):
            generation = defaults.merged(resolution=resolution, early_stop=EARLY_STOP, **fields)
            settings = EvalSettings(num_images=count, batch_size=32, generation=generation)
            print(f"== {size} px, {label}", flush=True)
            seconds = latency(engine, settings)
            report = evaluate(engine.pipeline, held_out, settings, alignment, gallery=gallery)
            rows.append(
                {
                    "size": size,
                    "case": label,
                    "settings": settings.to_dict(),
                    "latency_s": seconds,
                    "seconds_per_image": report["seconds_per_image"],
                    "metrics": report["metrics"],
                }
            )
    print(
        f"\n{'size':>4} {'case':<16} {'1 image s':>9} {'speed-up':>8} {'batch s/img':>11} {'speed-up':>8} "
        f"{'FD':>7} {'FD x':>6} {'top5':>6} {'d top5':>7} {'concept':>7}"
    )
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["case"] == "off")
        m, b = row["metrics"], base["metrics"]
        row["speedup_latency"] = base["latency_s"] / row["latency_s"]
        row["speedup_batch"] = base["seconds_per_image"] / row["seconds_per_image"]
        row["fd_ratio"] = m["fd_effnet_l0"] / b["fd_effnet_l0"]
        row["top5_change"] = m["alignment_top5"] - b["alignment_top5"]
        print(
            f"{row['size']:>4} {row['case']:<16} {row['latency_s']:9.3f} {row['speedup_latency']:8.2f} "
            f"{row['seconds_per_image']:11.4f} {row['speedup_batch']:8.2f} {m['fd_effnet_l0']:7.1f} "
            f"{row['fd_ratio']:6.3f} {m['alignment_top5']:6.3f} {row['top5_change']:+7.3f} "
            f"{m['concept_retrieval']:7.3f}"
        )
    draw_pictures(engine, policies)
    report = {
        "hardware": describe_device("cpu"),
        "torch": torch.__version__,
        "profile": engine.profile.to_dict(),
        "early_stop": EARLY_STOP,
        "policies": policies.to_dict(),
        "n": {"64": args.n, "128": args.n_high},
        "rows": rows,
    }
    path = RESULTS / "adaptive-cpu.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}, docs/images/adaptive.png and adaptive-128.png")


if __name__ == "__main__":
    main()
