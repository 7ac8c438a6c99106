"""Build the shipped model's prompt reference and measure how the drift flag behaves.

``--captions`` of the distinct training captions (every phrasing the training draws) are
encoded with MiniLM; ``--size`` of them become the reference, the others set the threshold
(their 99th-percentile distance). Reported: the share flagged among the held-out split's distinct captions (near
1 % if held-out prompts look like training ones) and among prompts from outside the domain
(photographs, scenes, styles the model never saw), which should be flagged.

Writes ``prompt_reference.safetensors`` into the shipped model's folder and
``results/prompt-drift.json``.

    python benchmarks/prompt_drift.py           # ~2 min on the 2-core CPU
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fractalflow.data.emoji import load_emoji
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.model.text import TextEncoder
from fractalflow.monitoring.drift import build_reference
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
OUTSIDE = [
    "a photo of a golden retriever running on a beach at sunset",
    "portrait of an old fisherman, oil painting, dramatic lighting",
    "a futuristic city at night, cyberpunk, neon reflections in the rain",
    "aerial view of a winding river through an autumn forest",
    "a bowl of ramen with a soft-boiled egg, food photography",
    "an astronaut riding a horse on the moon, photorealistic",
    "macro shot of a dew drop on a spider web",
    "a medieval castle on a cliff above a stormy sea",
    "a watercolor painting of a quiet Paris street cafe",
    "a close-up of a tiger's face in the jungle",
    "interior of a cozy library with a fireplace",
    "a vintage red sports car parked in front of a diner",
    "an anime girl with blue hair standing in a field of flowers",
    "isometric render of a tiny island with a lighthouse",
    "a snowy mountain range reflected in a lake at dawn",
    "street photography of a crowded market in Marrakech",
    "a steampunk airship above Victorian London",
    "the inside of a computer motherboard, extreme detail",
    "a minimalist architectural photo of a concrete staircase",
    "a bouquet of peonies in a glass vase on a wooden table",
]


def pooled(encoder: TextEncoder, prompts: list[str], chunk: int = 512):
    """Pooled MiniLM vectors of ``prompts``, a chunk at a time (the token features are dropped)."""
    return torch.cat([encoder.encode(prompts[i : i + chunk]).pooled for i in range(0, len(prompts), chunk)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="reference captions (default: 2048)")
    parser.add_argument(
        "--captions",
        type=int,
        default=8000,
        help="training captions drawn, reference included (default: 8000)",
    )
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    args = parser.parse_args()
    encoder = TextEncoder.from_pretrained(cache_size=0)
    train = load_emoji(args.data, image_size=64, split="train")
    held_out = load_emoji(args.data, image_size=64, split="eval")
    distinct = sorted({caption for variants in train.caption_variants for caption in variants})
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(0))[: args.captions]
    captions = [distinct[i] for i in order.tolist()]
    drift, others = build_reference(pooled(encoder, captions), size=args.size)
    drift.save(default_model_folder())
    held_captions = sorted(set(held_out.captions))
    held = drift.distances(pooled(encoder, held_captions))
    outside = drift.distances(pooled(encoder, OUTSIDE))
    rows = {
        "training captions not in the reference": others,
        "held-out captions": held,
        "prompts from outside the domain": outside,
    }
    print(
        f"reference: {args.size} of {len(captions)} drawn from {len(distinct)} distinct training captions; "
        f"threshold {drift.threshold:.4f}"
    )
    print(f"{'prompts':40s} {'n':>5s} {'median distance':>15s} {'flagged':>8s}")
    result = {
        "reference": args.size,
        "captions_drawn": len(captions),
        "distinct_training_captions": len(distinct),
        "threshold": drift.threshold,
        "rows": {},
    }
    for name, distances in rows.items():
        flagged = float((distances > drift.threshold).double().mean())
        print(f"{name:40s} {len(distances):5d} {float(distances.median()):15.4f} {flagged:8.3f}")
        result["rows"][name] = {"n": len(distances), "median": float(distances.median()), "flagged": flagged}
    result["outside_distances"] = dict(zip(OUTSIDE, outside.tolist()))
    result["hardware"] = describe_device("cpu")
    atomic_write_text(RESULTS / "prompt-drift.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'prompt-drift.json'} and the reference into {default_model_folder()}")


if __name__ == "__main__":
    main()
