"""Calibrate the probable-hallucination flag and measure its precision and recall.

Training split (``--train`` emoji and icons drawn at random): each real image scored against
its own caption (matched) and against the caption of an image of another concept
(mismatched); the threshold is the score that flags the mismatched with the highest F1. The
held-out split is scored the same way with that threshold: precision (flagged pairs that are
mismatched) and recall (mismatched pairs flagged). Then the shipped default model draws one
image per held-out caption (``--n``) and the share it flags is reported.

Writes the threshold into the shipped alignment encoder's folder (``hallucination.json``,
where ``HallucinationCheck.shipped`` finds it) and ``results/hallucination.json``.

    python benchmarks/hallucination.py          # ~3 min on the 2-core CPU
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder, shipped_alignment_folder
from fractalflow.evaluation.evaluate import eval_rows
from fractalflow.events import images_to_tensor
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.monitoring.hallucination import (
    HALLUCINATION_FILE,
    HallucinationCheck,
    HallucinationThreshold,
    best_threshold,
    flag_quality,
    mismatched_rows,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def pair_scores(check: HallucinationCheck, pipeline: FractalFlowPipeline, dataset, rows: list[int]):
    """(matched, mismatched) scores of the images ``rows`` of ``dataset`` (64 px)."""
    images = (dataset.pixels(torch.tensor(rows), 64) + 1) / 2
    captions = [dataset.captions[i] for i in rows]
    others = mismatched_rows([dataset.records[i].concept for i in rows])
    pooled = pipeline.text_encoder.encode(captions).pooled
    return check.scores(images, pooled), check.scores(images, pooled[others])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000, help="training images to calibrate on (default: 2000)")
    parser.add_argument("--n", type=int, default=200, help="held-out captions the default model draws (default: 200)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipeline = FractalFlowPipeline.default(device="cpu")
    train = load_emoji(args.data, image_size=64, split="train")
    held_out = load_emoji(args.data, image_size=64, split="eval")
    uncalibrated = HallucinationCheck(load_alignment_encoder(), HallucinationThreshold(threshold=0.0))
    train_rows = torch.randperm(len(train))[: args.train].tolist()
    matched, mismatched = pair_scores(uncalibrated, pipeline, train, train_rows)
    threshold = best_threshold(matched, mismatched)
    train_precision, train_recall = flag_quality(matched, mismatched, threshold)
    held_matched, held_mismatched = pair_scores(uncalibrated, pipeline, held_out, list(range(len(held_out))))
    held_precision, held_recall = flag_quality(held_matched, held_mismatched, threshold)
    calibrated = HallucinationThreshold(
        threshold=round(threshold, 4),
        train_pairs=2 * len(train_rows),
        train_precision=round(train_precision, 4),
        train_recall=round(train_recall, 4),
        held_out_pairs=2 * len(held_out),
        held_out_precision=round(held_precision, 4),
        held_out_recall=round(held_recall, 4),
    )
    calibrated.save_json(shipped_alignment_folder() / HALLUCINATION_FILE)

    check = HallucinationCheck(uncalibrated.encoder, calibrated)
    prompts = [held_out.captions[i] for i in eval_rows(args.n, len(held_out))]
    drawn = pipeline.generate(prompts, seed=0)
    generated = check.report(images_to_tensor(drawn.images).float() / 255, pipeline.text_encoder.encode(prompts).pooled)
    flagged = sum(entry["probable_hallucination"] for entry in generated) / len(generated)
    real_flagged = float((held_matched < threshold).double().mean())

    print(f"threshold {calibrated.threshold:.4f} (training split, {calibrated.train_pairs} pairs)")
    print(f"{'split':10s} {'pairs':>6s} {'precision':>9s} {'recall':>7s}")
    print(f"{'train':10s} {calibrated.train_pairs:6d} {train_precision:9.3f} {train_recall:7.3f}")
    print(f"{'held-out':10s} {calibrated.held_out_pairs:6d} {held_precision:9.3f} {held_recall:7.3f}")
    print(f"flagged: {real_flagged:.3f} of real held-out images with their own caption, {flagged:.3f} of the "
          f"default model's images for {len(prompts)} held-out captions")  # fmt: skip
    result = {
        "calibration": calibrated.to_dict(),
        "real_held_out_flagged": real_flagged,
        "generated_flagged": flagged,
        "generated_images": len(prompts),
        "matched_score_mean": {"train": matched.mean().item(), "held_out": held_matched.mean().item()},
        "mismatched_score_mean": {"train": mismatched.mean().item(), "held_out": held_mismatched.mean().item()},
        "hardware": describe_device("cpu"),
    }
    atomic_write_text(RESULTS / "hallucination.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'hallucination.json'} and {shipped_alignment_folder() / HALLUCINATION_FILE}")


if __name__ == "__main__":
    main()
