"""Coarse-to-fine refinement against single-scale sampling, with the shipped default model.

For each setting: FD-EffNetL0, precision/recall and alignment on the held-out captions
(``fractalflow eval``'s metrics), the sampling cost in 64 px-evaluation units, seconds per
image in batches, and at batch 1 the time to the first preview and to the finished image.
The baseline is single-scale Euler at 64 px with 20 steps, measured in the same run.

    python benchmarks/refine.py            # ~25 min on 2 CPU cores
    python benchmarks/refine.py --n 200    # quicker, noisier FD

Prints a table and writes ``benchmarks/results/refine-<device>.json``. The quality of variants
already in it with the same settings, n and hardware is kept, not measured again; timings are
always measured, so every ratio is against a baseline timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.evaluate import EvalSettings, evaluate
from fractalflow.files import atomic_write_text
from fractalflow.flow.refine import DEFAULT_SCALES, ProgressiveRefiner, RefineSettings, plan_stages, stage_cost
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device
from fractalflow.inference.bench import latency

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"

# (name, EvalSettings overrides): the first is the baseline
VARIANTS = [
    ("single scale, 20 steps (baseline)", {"size": 64, "steps": 20}),
    ("16-32-64 px, 20 steps", {"resolution": "standard", "scales": (0.25, 0.5, 1.0), "steps": 20}),
    ("16-32-64 px, 29 steps (equal cost)", {"resolution": "standard", "scales": (0.25, 0.5, 1.0), "steps": 29}),
    (
        "16-32-64 px, 29 steps, early stop 0.02",
        {"resolution": "standard", "scales": (0.25, 0.5, 1.0), "steps": 29, "early_stop": 0.02},
    ),
    ("32-64 px, 27 steps (equal cost)", {"resolution": "standard", "scales": (0.5, 1.0), "steps": 27}),
    (
        "32-64 px, 27 steps, early stop 0.02",
        {"resolution": "standard", "scales": (0.5, 1.0), "steps": 27, "early_stop": 0.02},
    ),
]


def cost(config: GenerationConfig, native: int, multiple: int) -> float:
    """Velocity evaluations in units of one at 64 px (guidance doubles every variant alike)."""
    scales = DEFAULT_SCALES if config.resolution else (config.size / native,)
    stages = plan_stages(config.refine_settings("standard", scales), native, multiple)
    return stage_cost(stages) * (stages[-1].size / 64) ** 2


def preview_milliseconds(size: int, repeats: int = 200) -> float:
    """Milliseconds to turn one image's clean-image estimate at ``size`` px into its preview."""
    refiner = ProgressiveRefiner(RefineSettings(resolution=size, scales=(1.0,)), native_size=size, multiple=8)
    x0 = torch.randn(1, 3, size, size)
    begin = time.perf_counter()
    for _ in range(repeats):
        refiner.preview(x0)
    return (time.perf_counter() - begin) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n", type=int, default=661, help="images per variant (default: 661, one per held-out caption)"
    )
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    args = parser.parse_args()

    pipeline = FractalFlowPipeline.default(device="cpu")
    native, multiple = pipeline.config.sample_size, pipeline.config.downsampling
    held_out = load_emoji(args.data, image_size=64, split="eval")
    alignment = load_alignment_encoder()
    path = RESULTS / f"refine-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    hardware = describe_device("cpu")
    previous = json.loads(path.read_text()) if path.is_file() else {}
    same_run = previous.get("n") == args.n and previous.get("hardware") == hardware
    measured = {row["variant"]: row for row in previous.get("variants", [])} if same_run else {}
    rows = []
    for name, overrides in VARIANTS:
        settings = EvalSettings(num_images=args.n, batch_size=64, generation=GenerationConfig(**overrides))
        print(f"== {name}", flush=True)
        first_preview, finished = latency(pipeline, settings.generation)
        if name in measured and measured[name]["eval"]["settings"] == json.loads(json.dumps(settings.to_dict())):
            report = measured[name]["eval"]  # quality measured by an earlier run with the same settings
        else:
            report = evaluate(pipeline, held_out, settings, alignment=alignment)
        rows.append(
            {
                "variant": name,
                "cost_64px_evaluations": cost(settings.generation, native, multiple),
                "seconds_to_first_preview": first_preview,
                "seconds_to_image_batch1": finished,
                "eval": report,
            }
        )
    base = rows[0]
    print(
        f"\n{'variant':42s} {'cost':>5s} {'FD':>7s} {'prec':>5s} {'rec':>5s} {'top5':>5s} "
        f"{'s/img':>6s} {'1st preview':>11s} {'image (b=1)':>11s} {'time ratio':>10s}"
    )
    for row in rows:
        m = row["eval"]["metrics"]
        print(
            f"{row['variant']:42s} {row['cost_64px_evaluations']:5.1f} {m['fd_effnet_l0']:7.1f} {m['precision']:5.3f} "
            f"{m['recall']:5.3f} {m['alignment_top5']:5.3f} {row['eval']['seconds_per_image']:6.3f} "
            f"{row['seconds_to_first_preview']:11.3f} {row['seconds_to_image_batch1']:11.3f} "
            f"{row['seconds_to_image_batch1'] / base['seconds_to_image_batch1']:10.2f}"
        )
    step_ms = base["seconds_to_image_batch1"] / 20 * 1000
    previews = {size: preview_milliseconds(size) for size in (64, 256)}
    print(
        f"\npreview per step: {previews[64]:.3f} ms at 64 px, {previews[256]:.3f} ms at 256 px "
        f"(a 64 px baseline step at batch 1: {step_ms:.1f} ms)"
    )
    report = {
        "hardware": hardware,
        "torch": torch.__version__,
        "n": args.n,
        "variants": rows,
        "preview_ms": {"64": previews[64], "256": previews[256], "baseline_step_ms_batch1": step_ms},
    }
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
