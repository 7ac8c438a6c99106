"""Beyond the trained size: the ``high`` resolution (32 -> 64 -> 128 px, the last scale a
re-noise/denoise pass at twice the trained size, with several upscale strengths) and one
scale at 128 px against bicubic upsampling of the ``standard`` 64 px images, all judged
against the real held-out images at 128 px.

Same captions and seeds for all; refinement uses early stopping (one scale does not).
FD-EffNetL0 and k-NN precision/recall in the features of ``fractalflow eval`` (128 px
input), and the seconds per image of each in batches.

    python benchmarks/upscale.py            # ~20 min on 2 CPU cores (n = 200)
    python benchmarks/upscale.py --n 661
    python benchmarks/upscale.py --grid     # only the picture: docs/images/upscale-cpu.png

Prints a table and writes ``benchmarks/results/upscale-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.evaluate import EvalSettings, generate_for_captions
from fractalflow.evaluation.features import EffNetFeatures
from fractalflow.evaluation.frechet import frechet_distance_of_features
from fractalflow.evaluation.manifold import precision_recall
from fractalflow.files import atomic_path, atomic_write_text
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
GRID_PROMPTS = ["red heart", "bell icon", "rocket", "smiling face with sunglasses"]


# (name, EvalSettings overrides, upsample the result bicubically to 128 px): the first is the baseline
VARIANTS = [
    ("standard 64 px + bicubic x2 (baseline)", {"resolution": "standard"}, True),
    ("one scale at 128 px, 20 steps", {"size": 128}, False),
    ("high, upscale strength 0.5 (default)", {"resolution": "high"}, False),
    ("high, upscale strength 0.3", {"resolution": "high", "upscale_strength": 0.3}, False),
    ("high, upscale strength 0.15", {"resolution": "high", "upscale_strength": 0.15}, False),
]


def bicubic_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    upsampled = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
    return upsampled.round().clamp(0, 255).byte()


def draw_grid(pipeline: FractalFlowPipeline, path: Path) -> None:
    """Rows: standard + bicubic x2, high with upscale strength 0.15, one scale at 128 px (seed 0)."""
    rows = [
        [
            image.resize((128, 128), Image.Resampling.BICUBIC)
            for image in pipeline.generate(GRID_PROMPTS, seed=0, resolution="standard", early_stop=0.02).images
        ],
        pipeline.generate(GRID_PROMPTS, seed=0, resolution="high", early_stop=0.02, upscale_strength=0.15).images,
        pipeline.generate(GRID_PROMPTS, seed=0, size=128).images,
    ]
    sheet = Image.new("RGB", (128 * len(GRID_PROMPTS), 128 * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(image, (128 * c, 128 * r))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="held-out captions (default: 200)")
    parser.add_argument("--early-stop", type=float, default=0.02, help="early-stop threshold (default: 0.02)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--grid", action="store_true", help="only draw the comparison picture")
    args = parser.parse_args()

    pipeline = FractalFlowPipeline.default(device="cpu")
    if args.grid:
        draw_grid(pipeline, REPO / "docs" / "images" / "upscale-cpu.png")
        return
    held_out = load_emoji(args.data, image_size=128, split="eval")
    count = min(args.n, len(held_out))
    prompts = held_out.captions[:count]
    real = torch.round((held_out.pixels(torch.arange(count), 128) + 1) * 127.5).clamp(0, 255).byte()
    features = EffNetFeatures(size=128)
    real_features = features.features((real.float() / 255).split(128))

    rows = []
    for name, overrides, upsample in VARIANTS:
        print(f"== {name}", flush=True)
        early_stop = 0.0 if overrides.get("size") else args.early_stop
        generation = GenerationConfig(early_stop=early_stop, **overrides)
        settings = EvalSettings(num_images=count, batch_size=32, generation=generation)
        begin = time.perf_counter()
        images = generate_for_captions(pipeline, prompts, settings)
        seconds = (time.perf_counter() - begin) / count
        if upsample:
            images = bicubic_uint8(images, 128)
        fake_features = features.features((images.float() / 255).split(128))
        precision, recall = precision_recall(real_features, fake_features, k=3)
        rows.append(
            {
                "variant": name,
                "settings": settings.to_dict(),
                "fd_effnet_l0": frechet_distance_of_features(real_features, fake_features),
                "precision": precision,
                "recall": recall,
                "seconds_per_image": seconds,
            }
        )
    base = rows[0]
    print(f"\n{'variant':40s} {'FD':>7s} {'x base':>6s} {'prec':>5s} {'rec':>5s} {'s/img':>6s} {'x base':>6s}")
    for row in rows:
        print(
            f"{row['variant']:40s} {row['fd_effnet_l0']:7.1f} {row['fd_effnet_l0'] / base['fd_effnet_l0']:6.3f} "
            f"{row['precision']:5.3f} {row['recall']:5.3f} {row['seconds_per_image']:6.3f} "
            f"{row['seconds_per_image'] / base['seconds_per_image']:6.2f}"
        )
    path = RESULTS / f"upscale-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    report = {"hardware": describe_device("cpu"), "torch": torch.__version__, "n": count, "rows": rows}
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
