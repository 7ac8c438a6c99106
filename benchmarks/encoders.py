"""The shipped model on the held-out split of the new data, measured under the old and the new
alignment encoder from one set of generated images, so the old numbers stay comparable.

    python benchmarks/encoders.py --old runs/alignment-old --new src/fractalflow/weights/alignment

Generates ``--n`` images (``fractalflow eval`` settings: Euler 20 steps, guidance 3, seeds
0..n-1, held-out captions spread over the split), then reports FD-EffNetL0, precision/recall,
concept retrieval (encoder-free) and alignment top-1/top-5 under each encoder, with the real
held-out ceilings. Writes ``benchmarks/results/encoders-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.concepts import is_emoji_concept
from fractalflow.evaluation.evaluate import EvalSettings, eval_rows, evaluate, generate_for_captions
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="folder of the former alignment encoder")
    parser.add_argument("--new", default=None, help="folder of the new alignment encoder (default: the shipped one)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji folder")
    parser.add_argument("--n", type=int, default=1000, help="images to generate (default: 1000)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "encoders-cpu.json"))
    args = parser.parse_args()

    pipeline = FractalFlowPipeline.from_pretrained(args.model) if args.model else FractalFlowPipeline.default()
    settings = EvalSettings(num_images=args.n, batch_size=50)
    held_out = load_emoji(args.data, image_size=64, split="eval")
    rows = eval_rows(args.n, len(held_out))
    concepts = {held_out.records[i].concept for i in rows if is_emoji_concept(held_out.records[i])}
    gallery = load_emoji(args.data, 64, split="all", keep=lambda record: record.concept in concepts)
    started = time.perf_counter()
    images = generate_for_captions(pipeline, [held_out.captions[i] for i in rows], settings)
    seconds_per_image = (time.perf_counter() - started) / args.n
    reports = {}
    for name, folder in (("old_encoder", args.old), ("new_encoder", args.new)):
        encoder = load_alignment_encoder(folder)
        report = evaluate(pipeline, held_out, settings, encoder, gallery=gallery, images=images)
        reports[name] = {"alignment_model": folder or "shipped", **report, "seconds_per_image": seconds_per_image}
    result = {"what": __doc__.strip().splitlines()[0], **reports, "hardware": describe_device("cpu")}
    result["torch"] = torch.__version__
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(f"{'metric':<22} {'old encoder':>12} {'(real)':>8} {'new encoder':>12} {'(real)':>8}")
    old, new = reports["old_encoder"], reports["new_encoder"]
    for metric, value in old["metrics"].items():
        print(
            f"{metric:<22} {value:>12.4f} {old['real_held_out'].get(metric, float('nan')):>8.4f} "
            f"{new['metrics'][metric]:>12.4f} {new['real_held_out'].get(metric, float('nan')):>8.4f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
