"""Step caching against full compute, timed in pairs: the shipped model's own sampling
defaults with each variant (by default ``adaptive="auto"``, alone and with early stop 0.02)
against ``adaptive="off"``, batches of held-out captions drawn alternately in one process
(ABBA after a warm-up pair), so a machine that changes speed slows both alike. Prints the
median ratio of each pair's seconds and writes ``results/adaptive-paired-b<batch>.json``.
Quality of the same settings: ``benchmarks/guidance.py --variants`` with the same variants.

    python benchmarks/adaptive_paired.py --batch 32 --pairs 6
    python benchmarks/adaptive_paired.py --batch 1 --pairs 20 --variants adaptive=2 "adaptive=2,early_stop=0.02"
    python benchmarks/adaptive_paired.py --baseline resolution=128,early_stop=0.02 --variants adaptive=auto \
        --out benchmarks/results/adaptive-paired-128-b1.json --batch 1   # variants go over the baseline

A variant is written as for ``benchmarks/guidance.py``: comma-separated ``name=value``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from guidance import parse_variant

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.files import atomic_write_text
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device
from fractalflow.inference.bench import interleaved
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DEFAULT_VARIANTS = ["adaptive=auto", "adaptive=auto,early_stop=0.02"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_folder()), help="model folder (default: the shipped one)")
    parser.add_argument("--batch", type=int, default=32, help="captions per generate call (default: 32)")
    parser.add_argument("--pairs", type=int, default=6, help="timed pairs after the warm-up pair (default: 6)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="settings to time against full")
    parser.add_argument("--baseline", default="", help="settings over the model's defaults that full compute uses")
    parser.add_argument("--out", default=None, help="JSON file (default: results/adaptive-paired-b<batch>.json)")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.from_pretrained(args.model, device="cpu")
    captions = [variants[0] for variants in load_emoji(args.data, image_size=64, split="eval").caption_variants]
    full = pipeline.generation_config.merged(**(parse_variant(args.baseline) if args.baseline else {}))
    candidates = {variant: full.merged(**parse_variant(variant)) for variant in args.variants}

    def timed(config: GenerationConfig) -> Callable[[int], float]:
        """Seconds of pair i's batch of captions under ``config``, seed i."""

        def run(i: int) -> float:
            start = (i * args.batch) % max(1, len(captions) - args.batch)
            begin = time.perf_counter()
            pipeline.generate(captions[start : start + args.batch], seed=i, config=config)
            return time.perf_counter() - begin

        return run

    rows = {}
    for name, candidate in candidates.items():
        candidate_seconds, full_seconds = interleaved(timed(candidate), timed(full), args.pairs)
        speedup = statistics.median(f / c for f, c in zip(full_seconds, candidate_seconds))
        rows[name] = {
            "speedup": speedup,
            "full_seconds": full_seconds,
            "candidate_seconds": candidate_seconds,
            "config": candidate.describe(),
        }
        print(f"batch {args.batch}, {name}: {speedup:.3f}x full compute (median of {args.pairs} pairs)", flush=True)
    out = Path(args.out) if args.out else RESULTS / f"adaptive-paired-b{args.batch}.json"
    payload = {"hardware": describe_device("cpu"), "model": args.model, "config": full.describe(), "batch": args.batch}
    payload["rows"] = rows
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
