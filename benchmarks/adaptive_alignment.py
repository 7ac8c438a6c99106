"""Do adaptive policies cost prompt alignment on *training* captions? The check calibration could make.

Draws ``--n`` training captions (seed i for image i, the shipped model's sampling defaults)
with full compute and with each candidate, and compares, per image, the alignment encoder's
cosine between the image and its caption (the mean change, with its standard error) and
top-5 retrieval among the drawn captions. Never reads the held-out split. Prints a table and
writes ``results/adaptive-alignment.json``.

    python benchmarks/adaptive_alignment.py --n 256     # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline
from fractalflow.evaluation.alignment import (
    alignment_scores,
    caption_index,
    image_embeddings,
    load_alignment_encoder,
    ranks_of_own_captions,
)
from fractalflow.events import images_to_tensor
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference.calibrate import training_captions
from fractalflow.model.adaptive import CacheSettings

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
LEVEL_1_EVERY_2 = dict(depth=1, every=2, start=0.9, extrapolate=True)
CANDIDATES = {
    "14 steps": dict(steps=14),
    "12 steps": dict(steps=12),
    "10 steps": dict(steps=10),
    "7 steps": dict(steps=7),
    "14 steps, level 1 every 2nd step below 0.9": dict(adaptive=CacheSettings(**LEVEL_1_EVERY_2, step_fraction=0.7)),
    "level 1 until a 15 % drift": dict(adaptive=CacheSettings(depth=1, every=8, drift=0.15, extrapolate=True)),
    "level 1 every 2nd step below 0.9": dict(adaptive=CacheSettings(**LEVEL_1_EVERY_2)),
    "the same with guidance caching": dict(
        adaptive=CacheSettings(**LEVEL_1_EVERY_2, guidance_every=2, guidance_start=0.9)
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="training captions (default: 256)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--batch", type=int, default=64, help="captions per generate call (default: 64)")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.default(device="cpu")
    captions = training_captions(args.data, args.n, seed=1)
    encoder = load_alignment_encoder()
    distinct, own = caption_index(captions)
    with torch.no_grad():
        texts = encoder.embed_texts(pipeline.text_encoder.encode(distinct).pooled)

    def alignment(**settings) -> tuple[torch.Tensor, float]:
        """Per-image cosine to its caption, and top-5 among the drawn captions."""
        batches = []
        for start in range(0, args.n, args.batch):
            result = pipeline.generate(captions[start : start + args.batch], seed=start, **settings)
            batches.append(images_to_tensor(result.images))
        embedded = image_embeddings(encoder, torch.cat(batches).float() / 255.0)
        cosine = (embedded * texts[own]).sum(dim=1)  # (n,)
        return cosine, alignment_scores(ranks_of_own_captions(embedded, own, texts))["top5"]

    full_cosine, full_top5 = alignment()
    rows = {"full compute": {"mean_cosine": float(full_cosine.mean()), "top5": full_top5}}
    print(f"{'run':44s} {'Δ cosine':>9s} {'± s.e.':>7s} {'Δ top-5':>8s}")
    for name, settings in CANDIDATES.items():
        cosine, top5 = alignment(**settings)
        change = cosine - full_cosine
        rows[name] = {
            "cosine_change": float(change.mean()),
            "standard_error": float(change.std() / len(change) ** 0.5),
            "top5": top5,
            "top5_change": top5 - full_top5,
        }
        row = rows[name]
        print(f"{name:44s} {row['cosine_change']:+9.4f} {row['standard_error']:7.4f} {row['top5_change']:+8.3f}")
    report = {"n": args.n, "split": "train", "hardware": describe_device("cpu"), "rows": rows}
    atomic_write_text(RESULTS / "adaptive-alignment.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'adaptive-alignment.json'}")


if __name__ == "__main__":
    main()
