"""Train the prompt-alignment encoder of ``fractalflow eval`` and install it in the package.

Trains on the emoji set's training split (image tower from scratch, frozen MiniLM text
tower with a trained projection), then reports its retrieval accuracy on the real held-out
images: the ceiling that generated images are measured against. With --install it is
written to ``src/fractalflow/weights/alignment`` and the numbers to
``benchmarks/results/alignment-encoder.json``.

    python scripts/train_alignment.py --install
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import (
    AlignmentConfig,
    alignment_scores,
    caption_index,
    caption_ranks,
    shipped_alignment_folder,
    train_alignment,
)
from fractalflow.evaluation.convnet import SmallTrainConfig
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.model.text import TextEncoder
from fractalflow.model.weights import save_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = AlignmentConfig(image_size=32, widths=(32, 64, 128, 256), embed_dim=256)
TRAIN = SmallTrainConfig(steps=3000, batch_size=256, learning_rate=2e-3, warmup_steps=100, max_shift=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji folder")
    parser.add_argument("--steps", type=int, default=TRAIN.steps, help=f"training steps (default: {TRAIN.steps})")
    parser.add_argument("--out", default=None, help="folder to write the encoder to (default: none)")
    parser.add_argument("--install", action="store_true", help="write it into the package and record the numbers")
    args = parser.parse_args()

    train_set = load_emoji(args.data, image_size=64, split="train")
    held_out = load_emoji(args.data, image_size=64, split="eval")
    text_encoder = TextEncoder.from_pretrained(cache_size=len(train_set) * 4 + 1024)
    train = SmallTrainConfig(**{**TRAIN.to_dict(), "steps": args.steps})
    started = time.perf_counter()
    encoder = train_alignment(train_set, text_encoder, CONFIG, train)
    seconds = time.perf_counter() - started

    distinct, own = caption_index(held_out.captions)
    images = held_out.pixels(torch.arange(len(held_out))).add(1).div(2)
    scores = alignment_scores(caption_ranks(encoder, images, own, text_encoder.encode(distinct).pooled))
    report = {
        "what": "alignment encoder of fractalflow eval: retrieval of each real held-out image's own caption "
        "among the distinct held-out captions (the ceiling for generated images)",
        "held_out_images": len(held_out),
        "distinct_captions": len(distinct),
        "chance_top1": 1 / len(distinct),
        "top1": scores["top1"],
        "top5": scores["top5"],
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "train_images": len(train_set),
        "seconds": seconds,
        "hardware": describe_device("cpu"),
        "config": CONFIG.to_dict(),
        "train": train.to_dict(),
        "command": "python scripts/train_alignment.py --install",
    }
    print(json.dumps(report, indent=2))
    for folder in filter(None, [args.out, shipped_alignment_folder() if args.install else None]):
        save_model(encoder, folder)
        print(f"wrote {folder}")
    if args.install:
        atomic_write_text(
            REPO / "benchmarks" / "results" / "alignment-encoder.json", json.dumps(report, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
