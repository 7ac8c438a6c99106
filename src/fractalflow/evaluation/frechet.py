"""Fréchet distance between Gaussians fitted to two feature sets (the FID formula)."""

from __future__ import annotations

import numpy as np


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``(N, D)`` features; N must be at least 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    ``tr((S1 S2)^(1/2))`` is the sum of square roots of the eigenvalues of
    ``S1^(1/2) S2 S1^(1/2)``, which is symmetric positive semi-definite: an eigen-decomposition
    gives it without the complex round-off that ``sqrtm`` of the non-symmetric product
    produces for rank-deficient covariances (fewer samples than feature dimensions).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"shapes do not match: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and {sigma2.shape}"
        )
    return _frechet_distance(mu1, sigma1, _psd_sqrt(sigma1), mu2, sigma2)


def _frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, root1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray):
    """:func:`frechet_distance` with ``root1 = S1^(1/2)`` given (computed once for many ``S2``)."""
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt, 0.0))


def frechet_distance_of_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two ``(N, D)`` feature sets."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def frechet_distance_resampled(real: np.ndarray, fake: np.ndarray, resamples: int, seed: int = 0) -> list[float]:
    """FD of ``real`` against ``resamples`` bootstrap resamples of ``fake`` (its rows drawn
    with replacement): the spread an FD owes to which images happened to be drawn, for a
    regression check. Resampling repeats rows, so each value sits a little above the FD of
    all of ``fake``; compare resampled values with resampled values only."""
    fake = np.asarray(fake, dtype=np.float64)
    rng = np.random.default_rng(seed)
    mean, covariance = feature_statistics(real)
    root = _psd_sqrt(covariance)  # the real side is the same in every resample
    return [
        _frechet_distance(mean, covariance, root, *feature_statistics(fake[rng.integers(0, len(fake), len(fake))]))
        for _ in range(resamples)
    ]
