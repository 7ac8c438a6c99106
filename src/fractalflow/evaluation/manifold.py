"""k-NN manifold precision and recall (Kynkäänniemi et al., 2019) in a feature space."""

from __future__ import annotations

import numpy as np
import torch


def _nearest_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    radii = []
    for start in range(0, len(features), chunk):
        distances = torch.cdist(features[start : start + chunk], features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # +1: each point is its own nearest
    return torch.cat(radii)


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    inside = []
    for start in range(0, len(points), chunk):
        distances = torch.cdist(points[start : start + chunk], centres)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Precision: share of ``fake`` inside the real manifold (union of balls reaching each
    real point's k-th nearest real neighbour). Recall: share of ``real`` inside the fake manifold."""
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    if real_t.ndim != 2 or fake_t.ndim != 2 or real_t.shape[1] != fake_t.shape[1]:
        raise ValueError(
            f"need two (N, D) feature sets with the same D, got {tuple(real_t.shape)} and {tuple(fake_t.shape)}"
        )
    if min(len(real_t), len(fake_t)) <= k:
        raise ValueError(f"k={k} needs more than k points in each set, got {len(real_t)} and {len(fake_t)}")
    real_radii = _nearest_neighbour_radii(real_t, k, chunk)
    fake_radii = _nearest_neighbour_radii(fake_t, k, chunk)
    precision = _inside_any_ball(fake_t, real_t, real_radii, chunk).double().mean().item()
    recall = _inside_any_ball(real_t, fake_t, fake_radii, chunk).double().mean().item()
    return precision, recall
