"""Seams on the token grid: generated images against real held-out ones.

For each model folder, one image per held-out caption (spread over the split as
``fractalflow eval`` spreads them; seed i for image i; 20 steps at 64 px with the folder's
own sampling defaults, its generation_config.json: what the model draws for a user),
then :func:`fractalflow.evaluation.seams.seam_ratios`: the mean step between neighbouring
pixels across lines at multiples of 4, 8, 16 and 32 px, over the mean step inside a 4 px patch.
Real held-out images are measured alike; a ratio near theirs means no visible grid. Also the
lines whose step most exceeds the real images' step on the same line. Prints a table and
writes ``results/seams.json``. ``--settings`` measures each folder under each of several
sampling settings over its defaults (comma-separated ``name=value``, as ``guidance.py``'s variants).

    python benchmarks/seams.py runs/shipped-stage3 src/fractalflow/weights/default --n 256
    python benchmarks/seams.py src/fractalflow/weights/default --settings grid_jitter=0 grid_jitter=2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guidance import parse_variant
from PIL import Image

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.evaluate import EvalSettings, eval_rows, generate_for_captions
from fractalflow.evaluation.seams import PERIODS, line_steps, seam_ratios
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device, resolve_device

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
WORST_LINES = 5
# multicoloured pictures, where the seams show: one row each in --picture, seed 0
PICTURE_PROMPTS = [
    "cat face, twemoji style",
    "dog face",
    "grinning face, openmoji style",
    "monkey face",
    "sunset over a city",
    "pizza, noto style",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders")
    parser.add_argument("--n", type=int, default=256, help="held-out captions per model (default: 256)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--settings", nargs="+", default=[""], help="sampling settings over each folder's defaults")
    parser.add_argument("--out", default=str(RESULTS / "seams.json"), help="JSON file to write")
    parser.add_argument("--picture", default=None, help="also draw PICTURE_PROMPTS, a column per run, into this PNG")
    args = parser.parse_args()
    device = resolve_device(args.device)
    held_out = load_emoji(args.data, image_size=64, split="eval")
    rows = eval_rows(args.n, len(held_out))
    real = held_out.images[rows]
    real_steps = line_steps(real)  # (63,) at 64 px: line k at entry k - 1
    results, worst, columns = {"real held-out images": seam_ratios(real)}, {}, []
    for folder in args.models:
        pipeline = FractalFlowPipeline.from_pretrained(folder, device=device)
        for variant in args.settings:
            sampling = pipeline.generation_config.merged(
                size=64, steps=20, **(parse_variant(variant) if variant else {})
            )
            settings = EvalSettings(num_images=args.n, batch_size=64, generation=sampling)
            images = generate_for_captions(pipeline, [held_out.captions[i] for i in rows], settings, progress=False)
            name = f"{folder} {variant}".strip()
            results[name] = seam_ratios(images)
            against_real = line_steps(images) / real_steps
            order = against_real.argsort(descending=True)[:WORST_LINES]
            worst[name] = {int(k) + 1: round(float(against_real[k]), 3) for k in order}
            if args.picture:
                drawn = pipeline.generate(PICTURE_PROMPTS, seeds=[0] * len(PICTURE_PROMPTS), config=sampling)
                columns.append(drawn.grid(columns=1))
    header = f"{'images':56s}" + "".join(f"{f'{p} px':>8s}" for p in PERIODS) + "  worst lines (x real step)"
    print(header + "\n" + "-" * len(header))
    for name, ratios in results.items():
        lines = ", ".join(f"{k}: {v:.2f}" for k, v in worst.get(name, {}).items())
        print(f"{name:56s}" + "".join(f"{ratios[p]:8.2f}" for p in PERIODS) + f"  {lines}")
    if args.picture:
        picture = Image.new("RGB", (sum(c.width for c in columns), columns[0].height), "white")
        for i, column in enumerate(columns):
            picture.paste(column, (i * column.width, 0))
        picture.resize((picture.width * 2, picture.height * 2), resample=Image.NEAREST).save(args.picture)
        print(f"wrote {args.picture}: a column per run, in the table's order")
    report = {
        "n": args.n,
        "settings": args.settings,
        "hardware": describe_device(device),
        "ratios": results,
        "worst_lines": worst,
    }
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
