"""Do colour words act? "<colour> heart" for six colours, eight seeds each, per model.

An image counts when the median hue of its saturated, not-dark pixels falls in the asked
colour's hue range. Prints a table and writes ``results/colour-words.json`` (or ``--out``).

    python benchmarks/colour_words.py runs/default-p4/snapshots/final-222min src/fractalflow/weights/default
"""

from __future__ import annotations

import argparse
import colorsys
import json
from pathlib import Path

import numpy as np

from fractalflow import FractalFlowPipeline
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device

RESULTS = Path(__file__).parent / "results"
HUES = {  # hue ranges on [0, 1)
    "red": ((0.0, 0.06), (0.94, 1.0)),
    "orange": ((0.04, 0.12),),
    "yellow": ((0.11, 0.19),),
    "green": ((0.2, 0.45),),
    "blue": ((0.5, 0.72),),
    "purple": ((0.72, 0.9),),
}
SEEDS = list(range(8))


def shows(image, colour: str) -> bool:
    pixels = np.asarray(image).reshape(-1, 3).astype(float)[::4] / 255  # (N, 3) RGB in [0, 1]
    hsv = np.array([colorsys.rgb_to_hsv(*px) for px in pixels])
    coloured = hsv[(hsv[:, 1] > 0.35) & (hsv[:, 2] > 0.25)]
    if len(coloured) < 20:
        return False
    hue = float(np.median(coloured[:, 0]))
    return any(low <= hue <= high for low, high in HUES[colour])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders (each sampled with its own defaults, 20 steps)")
    parser.add_argument("--out", default=str(RESULTS / "colour-words.json"), help="JSON file to write")
    args = parser.parse_args()
    rows = []
    for folder in args.models:
        pipeline = FractalFlowPipeline.from_pretrained(folder, device="cpu")
        counts = {}
        for colour in HUES:
            images = pipeline.generate([f"{colour} heart"] * len(SEEDS), seeds=SEEDS, steps=20).images
            counts[colour] = sum(shows(image, colour) for image in images)
        sampling = pipeline.generation_config.merged(steps=20).describe()
        rows.append({"model": folder, "sampling": sampling, "counts": counts, "total": sum(counts.values())})
        rows[-1]["of"] = len(SEEDS) * len(HUES)
        print(f"{folder:50s} {counts} {rows[-1]['total']} of {rows[-1]['of']}", flush=True)
    payload = {"seeds": SEEDS, "hardware": describe_device("cpu"), "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
