"""Probable hallucination: a generated image that does not show what its prompt asked for.

The shipped image-text alignment encoder (:mod:`fractalflow.evaluation.alignment`) scores
each image against its prompt (cosine of their embeddings). An image scoring below a
threshold is flagged. The threshold is calibrated on the **training** split: real images
with their own caption (matched: no hallucination) against the same images with the caption
of another concept (mismatched: what a hallucination looks like to the encoder); it is the
score that best separates the two (highest F1 of flagging the mismatched). Its precision and
recall are then measured on the held-out split the same way and stored beside it
(``hallucination.json`` in the alignment encoder's folder, written by
``benchmarks/hallucination.py``), so the flag's quality is reported, not assumed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fractalflow.config import JsonConfig
from fractalflow.evaluation.alignment import AlignmentEncoder, load_alignment_encoder, shipped_alignment_folder

HALLUCINATION_FILE = "hallucination.json"


@dataclass(frozen=True)
class HallucinationThreshold(JsonConfig):
    """The calibrated threshold and how well it flags mismatched pairs (precision, recall),
    on the training pairs it was chosen on and on held-out pairs."""

    threshold: float
    train_pairs: int = 0
    train_precision: float = 0.0
    train_recall: float = 0.0
    held_out_pairs: int = 0
    held_out_precision: float = 0.0
    held_out_recall: float = 0.0


class HallucinationCheck:
    """Scores images against their prompts' pooled text features and flags those below the threshold."""

    def __init__(self, encoder: AlignmentEncoder, threshold: HallucinationThreshold):
        self.encoder = encoder.eval()
        self.threshold = threshold

    @classmethod
    def shipped(cls, folder: str | Path | None = None) -> HallucinationCheck | None:
        """The shipped encoder with its calibrated threshold; None where none was calibrated."""
        folder = Path(folder or shipped_alignment_folder())
        if not (folder / HALLUCINATION_FILE).is_file():
            return None
        return cls(load_alignment_encoder(folder), HallucinationThreshold.load_json(folder / HALLUCINATION_FILE))

    @torch.no_grad()
    def scores(self, images: Tensor, pooled: Tensor) -> Tensor:
        """Cosine between each image (``(B, C, H, W)`` in [0, 1]) and its prompt's pooled features ``(B, 384)``."""
        device = next(self.encoder.parameters()).device
        images, pooled = images.float().to(device), pooled.float().to(device)
        return (self.encoder.embed_images(images) * self.encoder.embed_texts(pooled)).sum(dim=1).cpu()

    def report(self, images: Tensor, pooled: Tensor) -> list[dict]:
        """Per image: its alignment score and whether it is a probable hallucination."""
        return [
            {"alignment": round(float(score), 4), "probable_hallucination": bool(score < self.threshold.threshold)}
            for score in self.scores(images, pooled)
        ]


def mismatched_rows(concepts: list[str], seed: int = 0) -> list[int]:
    """For each row, another row of a different concept (whose caption it is paired with)."""
    rng = random.Random(seed)
    rows = []
    for concept in concepts:
        while True:
            other = rng.randrange(len(concepts))
            if concepts[other] != concept:
                rows.append(other)
                break
    return rows


def flag_quality(matched: Tensor, mismatched: Tensor, threshold: float) -> tuple[float, float]:
    """(precision, recall) of flagging scores below ``threshold`` as mismatched."""
    flagged_bad = (mismatched < threshold).sum().item()
    flagged_good = (matched < threshold).sum().item()
    precision = flagged_bad / (flagged_bad + flagged_good) if flagged_bad + flagged_good else 0.0
    return precision, flagged_bad / len(mismatched)


def best_threshold(matched: Tensor, mismatched: Tensor) -> float:
    """The cut (midway between neighbouring scores) with the highest F1 of flagging the mismatched."""
    values = torch.cat([matched, mismatched]).sort().values
    cuts = (values[1:] + values[:-1]) / 2

    def f1(cut: float) -> float:
        precision, recall = flag_quality(matched, mismatched, cut)
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    return float(max(cuts.tolist(), key=f1))
