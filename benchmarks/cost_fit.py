"""Does calibration's count of a speed-up hold still when its cost fit is measured again?

Calibration counts a policy's speed-up from the passes and batch rows it ran, each costed by a
line fitted to timed forward passes of one and of two rows (``PassCost.time``: a part per pass
and a part per row). Two calibrations, sessions apart, counted 10 plain steps at 1.64× and
1.56× with the same passes. This script draws 16 training captions once with full compute, the
shipped model's ``auto`` and 2× policies and 10 plain steps (early stop 0.02, one at a time, as
calibration draws), then fits the costs ``--fits`` times in a row and counts each policy's
speed-up under every fit: the spread within one session, against the swing between sessions.

    python benchmarks/cost_fit.py --fits 10      # ~2 min on 2 cores

Writes ``benchmarks/results/cost-fit.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from fractalflow import FractalFlowPipeline
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference.calibrate import CalibrationSettings, PassCost, draw, staged_speedup, training_captions
from fractalflow.model.adaptive import CacheSettings
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
TEN_PLAIN_STEPS = CacheSettings(depth=0, step_fraction=0.5)  # passes that no guidance change moves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=10, help="cost fits in a row (default: 10)")
    parser.add_argument("--captions", type=int, default=16, help="training captions to draw (default: 16)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.from_pretrained(default_model_folder(), device="cpu")
    settings = CalibrationSettings(captions=args.captions)
    captions = training_captions(args.data, args.captions)
    shipped = pipeline.adaptive_policies  # the model's own 64 px policies, as calibrate wrote them
    policies = {"auto": shipped.choose("auto")[0], "10 plain steps": TEN_PLAIN_STEPS, "2x": shipped.choose(2.0)[0]}
    _, full = draw(pipeline, captions, settings, "off", early_stop=settings.early_stop)
    reports = {
        name: draw(pipeline, captions, settings, cache, early_stop=settings.early_stop)[1]
        for name, cache in policies.items()
    }
    size = pipeline.config.sample_size
    counts: dict[str, list[float]] = {name: [] for name in policies}
    shares = []
    for _ in range(args.fits):
        cost = PassCost.time(pipeline, captions[0], 2 * settings.cost_batch, size=size)
        shares.append(cost.per_pass.forward / (cost.per_pass.forward + cost.per_row.forward))
        for name, cache in policies.items():
            counts[name].append(staged_speedup({size: cost}, cache, reports[name], full))
    rows = {
        name: {"counts": values, "median": statistics.median(values), "min": min(values), "max": max(values)}
        for name, values in counts.items()
    }
    print(f"per-pass share of a one-row pass over {args.fits} fits: {min(shares):.2f} to {max(shares):.2f}")
    for name, row in rows.items():
        print(f"{name:28s} counted {row['min']:.3f} to {row['max']:.3f} (median {row['median']:.3f})")
    out = RESULTS / "cost-fit.json"
    report = {"hardware": describe_device("cpu"), "captions": args.captions, "per_pass_shares": shares, "rows": rows}
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
