"""Prompt drift: how far an incoming prompt lies from what the model was trained on.

A model folder may carry ``prompt_reference.safetensors``: unit MiniLM pooled vectors of a
sample of its training captions and, in the file's metadata, a distance threshold. A
prompt's *distance* is one minus its cosine to the nearest reference caption; it has
*drifted* when the distance is above the threshold, chosen as a high quantile of the
distances of other training captions (not in the reference), so about that share of
in-domain prompts is flagged by construction. ``benchmarks/prompt_drift.py`` builds the file
and reports the share flagged on held-out captions and on prompts from outside the domain.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from fractalflow.files import atomic_path

PROMPT_REFERENCE_FILE = "prompt_reference.safetensors"


class PromptDrift:
    """Distances of prompts (pooled text features) to the nearest of ``reference`` ``(K, D)``."""

    def __init__(self, reference: Tensor, threshold: float):
        if reference.ndim != 2 or not len(reference):
            raise ValueError(f"the prompt reference must be (K >= 1, D) vectors, got {tuple(reference.shape)}")
        self.reference = F.normalize(reference.float(), dim=-1)
        self.threshold = float(threshold)

    @classmethod
    def for_model(cls, folder: str | Path) -> PromptDrift | None:
        """The reference shipped in a model folder, or None where it has none."""
        path = Path(folder) / PROMPT_REFERENCE_FILE
        if not path.is_file():
            return None
        with safe_open(path, "pt") as stored:
            metadata = stored.metadata() or {}
            if "threshold" not in metadata or "reference" not in stored.keys():
                raise ValueError(f"{path}: needs a 'reference' tensor and a threshold in its metadata")
            return cls(stored.get_tensor("reference"), float(metadata["threshold"]))

    def save(self, folder: str | Path) -> None:
        with atomic_path(Path(folder) / PROMPT_REFERENCE_FILE) as tmp:
            save_file(
                {"reference": self.reference.half().contiguous()}, tmp, metadata={"threshold": f"{self.threshold:.6f}"}
            )

    def distances(self, pooled: Tensor) -> Tensor:
        """``(B,)``: one minus the cosine of each pooled vector ``(B, D)`` to its nearest reference."""
        similarity = F.normalize(pooled.float(), dim=-1) @ self.reference.T  # (B, K)
        return 1.0 - similarity.max(dim=1).values

    def report(self, pooled: Tensor) -> list[dict]:
        return [
            {"prompt_distance": round(float(d), 4), "prompt_drifted": bool(d > self.threshold)}
            for d in self.distances(pooled)
        ]


def build_reference(
    captions_pooled: Tensor, size: int = 2048, quantile: float = 0.99, seed: int = 0
) -> tuple[PromptDrift, Tensor]:
    """A :class:`PromptDrift` from the pooled vectors of distinct training captions: ``size``
    of them (at random) as the reference, the threshold the ``quantile`` of the others'
    distances to it. Returns it and those distances."""
    if len(captions_pooled) <= size:
        raise ValueError(f"{len(captions_pooled)} captions: need more than size={size} to set the threshold")
    order = torch.randperm(len(captions_pooled), generator=torch.Generator().manual_seed(seed))
    reference, others = captions_pooled[order[:size]], captions_pooled[order[size:]]
    distances = PromptDrift(reference, 0.0).distances(others)
    return PromptDrift(reference, float(torch.quantile(distances, quantile))), distances
