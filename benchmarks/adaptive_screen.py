"""Screen step-caching settings that calibration's grid lacks, on calibration's own measures.

Each setting is drawn on the same training captions and seeds as full compute (never the
held-out split), one image at a time with early stop 0.02, as ``fractalflow calibrate`` draws
them, and gets calibration's row: its speed-up counted in seconds measured on this machine and
its feature error against full compute's images. A setting is ``cache.<field>=value`` pairs
as in ``paired_draws.py``.

    python benchmarks/adaptive_screen.py \\
        "cache.depth=1,cache.every=2,cache.start=0.9,cache.extrapolate=true,cache.step_fraction=0.7" \\
        "cache.depth=1,cache.every=8,cache.drift=0.15,cache.extrapolate=true,cache.step_fraction=0.75"

Prints the rows and writes ``benchmarks/results/adaptive-screen.json`` (~15 s per setting and
a minute for full compute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guidance import parse_variant

from fractalflow import FractalFlowPipeline
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference.calibrate import CalibrationSettings, feature_embedder, measure, training_captions
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def screen(pipeline: FractalFlowPipeline, labelled: dict[str, str], data: str | Path, captions: int = 64) -> dict:
    """Calibration's row for each setting of ``labelled`` (label -> ``cache.<field>=value``
    pairs), printed under its label, in a report to write: the settings are drawn in one run,
    against one drawing of full compute."""
    settings = CalibrationSettings(captions=captions)
    candidates = [parse_variant(text)["adaptive"] for text in labelled.values()]
    prompts = training_captions(data, settings.captions, settings.seed)
    embed = feature_embedder()
    rows = measure(pipeline, prompts, settings, candidates, embed, progress=False, early_stop=settings.early_stop)
    for label, row in zip(labelled, rows):
        print(f"{row['speedup']:6.3f}x  error {row['error']:.3f}  {label}")
    return {"hardware": describe_device("cpu"), "calibration": settings.to_dict(), "rows": rows}


def write_report(report: dict, name: str) -> None:
    path = RESULTS / name
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="cache.<field>=value pairs, one setting each")
    parser.add_argument("--model", default=str(default_model_folder()), help="model folder (default: the shipped one)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--captions", type=int, default=64, help="training captions (default: 64, as calibrate)")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.from_pretrained(args.model, device="cpu")
    report = screen(pipeline, {text: text for text in args.settings}, args.data, args.captions)
    write_report({**report, "model": args.model}, "adaptive-screen.json")


if __name__ == "__main__":
    main()
