"""What a generation is conditioned on, and the embeddings that turn it into vectors."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn


@dataclass
class Conditioning:
    """A batch of conditions: class ids for class-conditional models, or text features.

    ``labels``: ``(B,)`` int64. ``pooled``: ``(B, cond_dim)``. ``tokens``: ``(B, L, cond_dim)``
    with ``mask`` ``(B, L)`` bool, True for real tokens.
    """

    labels: Tensor | None = None
    pooled: Tensor | None = None
    tokens: Tensor | None = None
    mask: Tensor | None = None

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __len__(self) -> int:
        tensors = self._tensors()
        if not tensors:
            raise ValueError("empty Conditioning: give labels or text features")
        return next(iter(tensors.values())).shape[0]

    def to(self, device: torch.device | str) -> Conditioning:
        return replace(self, **{k: v.to(device) for k, v in self._tensors().items()})

    def repeat(self, times: int) -> Conditioning:
        """Each condition repeated ``times`` times in a row (for several images per prompt)."""
        return replace(self, **{k: v.repeat_interleave(times, dim=0) for k, v in self._tensors().items()})

    def index(self, rows: Tensor) -> Conditioning:
        return replace(self, **{k: v[rows] for k, v in self._tensors().items()})

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        names = parts[0]._tensors().keys()
        return Conditioning(**{k: torch.cat([getattr(p, k) for p in parts]) for k in names})


def timestep_features(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of flow times ``t`` in [0, 1]: ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class ConditionEmbedder(nn.Module):
    """Turns (time, condition) into the vector that modulates every block (adaLN), and
    hands text tokens to cross-attention. Dropped samples (classifier-free guidance)
    use a learned null class or learned null text features.
    """

    def __init__(self, mapping_width: int, cond_dim: int, num_classes: int):
        super().__init__()
        self.mapping_width = mapping_width
        self.time_mlp = nn.Sequential(
            nn.Linear(mapping_width, mapping_width), nn.SiLU(), nn.Linear(mapping_width, mapping_width)
        )
        self.num_classes = num_classes
        if num_classes:
            self.class_embedding = nn.Embedding(num_classes + 1, mapping_width)  # last row: null class
        else:
            self.pooled_proj = nn.Sequential(
                nn.Linear(cond_dim, mapping_width), nn.SiLU(), nn.Linear(mapping_width, mapping_width)
            )
            self.null_pooled = nn.Parameter(torch.zeros(cond_dim))
            self.null_token = nn.Parameter(torch.zeros(cond_dim))

    def forward(
        self, t: Tensor, cond: Conditioning, drop: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        vector = self.time_mlp(timestep_features(t, self.mapping_width))
        if self.num_classes:
            if cond.labels is None:
                raise ValueError("this model is class-conditional: Conditioning.labels is required")
            labels = cond.labels if drop is None else torch.where(drop, self.num_classes, cond.labels)
            return vector + self.class_embedding(labels), None, None
        pooled, tokens, mask = text_with_null(cond, drop, self.null_pooled, self.null_token)
        return vector + self.pooled_proj(pooled), tokens, mask


def text_with_null(
    cond: Conditioning, drop: Tensor | None, null_pooled: Tensor, null_token: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """(pooled, tokens, mask) of text features, with the rows marked in ``drop`` replaced by
    the learned null text (one null token) for classifier-free guidance."""
    if cond.pooled is None or cond.tokens is None:
        raise ValueError("this model is text-conditional: Conditioning.pooled and .tokens are required")
    pooled, tokens, mask = cond.pooled, cond.tokens, cond.mask
    if mask is None:
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    if drop is not None:
        pooled = torch.where(drop[:, None], null_pooled.to(pooled.dtype), pooled)
        tokens = torch.where(drop[:, None, None], null_token.to(tokens.dtype), tokens)
        first = torch.arange(mask.shape[1], device=mask.device) == 0  # (L,): the null text is one token
        mask = (mask & ~drop[:, None]) | (first[None, :] & drop[:, None])  # logic, not where: ONNX Where has no bool
    return pooled, tokens, mask
