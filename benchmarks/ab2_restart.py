"""Should ``ab2`` start its history again where guidance turns off?

Across the end of the guidance interval (t = 0.7 for the default model) ``ab2`` extrapolates
from a guided velocity to an unguided one: with guidance 6, the first unguided step moves
along about ``v_cond - 2.5 (v_cond - v_uncond)``, against guidance for one step. This script
registers an experimental sampler, ``ab2-restart`` (an Euler step wherever the step starts
on the other side of the interval's lower end than the previous one did), and measures it
against ``ab2`` with ``fractalflow eval``'s metrics on the same captions and seeds (the
model's other defaults; training captions by default, where nothing is chosen).

    python benchmarks/ab2_restart.py --split train --n 661      # ~4 min on 2 cores

Writes ``benchmarks/results/ab2-restart-<split>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from guidance import Measuring

from fractalflow import FractalFlowPipeline
from fractalflow.evaluation.evaluate import EvalSettings
from fractalflow.files import atomic_write_text
from fractalflow.flow.samplers import AdamsBashforth2
from fractalflow.hardware import describe_device
from fractalflow.plugins import Plugin, registry

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def restarting_at(boundary: float) -> type:
    """``ab2`` whose history starts again where a step crosses flow time ``boundary``."""

    class AdamsBashforth2Restart(AdamsBashforth2):
        def __call__(self, velocity, x, t, t_next):
            if self.previous is not None and float(t) < boundary <= float(t - self.previous[1]):
                self.previous = None  # the last step began at or above the boundary: another velocity
            return super().__call__(velocity, x, t, t_next)

    return AdamsBashforth2Restart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=661, help="captions (default: 661)")
    parser.add_argument("--split", choices=("eval", "train"), default="train", help="captions to draw (default: train)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.default(device="cpu")
    defaults = pipeline.generation_config
    low = defaults.guidance_interval[0]
    registry().register(Plugin("sampler", "ab2-restart", "0", restarting_at(low), "experimental"))
    measuring = Measuring.load(args.data, 64, args.split, args.n)
    rows = []
    for sampler in ("ab2", "ab2-restart"):
        settings = EvalSettings(num_images=args.n, batch_size=64, generation=defaults.merged(sampler=sampler))
        report = measuring.evaluate(pipeline, settings)
        metrics = report["metrics"]
        rows.append({"sampler": sampler, "metrics": metrics})
        print(
            f"{sampler:12s} FD {metrics['fd_effnet_l0']:6.1f}  precision {metrics['precision']:.3f}  "
            f"recall {metrics['recall']:.3f}  top-5 {metrics['alignment_top5']:.3f}  "
            f"concepts {metrics['concept_retrieval']:.3f}",
            flush=True,
        )
    report = {"hardware": describe_device("cpu"), "torch": torch.__version__, "n": args.n, "split": args.split}
    path = RESULTS / f"ab2-restart-{args.split}.json"
    atomic_write_text(path, json.dumps({**report, "boundary": low, "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
