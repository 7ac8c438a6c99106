"""AdaptiveDepth: reuse an inner level's output across sampling steps (step caching).

An inner level of the hourglass works on the coarsest tokens, and its output changes
slowly from one sampling step to the next. While ``AdaptiveDepth(model, settings)`` is
active, the chosen level computes its output on some steps and returns the stored one on
the others (DeepCache, Ma et al. 2024; FORA, Selvaraju et al. 2024, do this for U-Nets and
DiTs). A step recomputes when the schedule says so (at most ``every - 1`` reuses in a row)
or when the level's input has drifted from the one its stored output was computed from by
more than ``drift`` (relative L2 over the batch's largest change), so a step whose input
moves a lot is never served stale features. A new shape (another stage of a coarse-to-fine
run, another batch) always recomputes.

    with AdaptiveDepth(model, CacheSettings(every=3, drift=0.05)) as adaptive:
        images = sample(...)
    adaptive.report()  # {'computed': 7, 'reused': 13, ...}

Outside the ``with`` block the model is unchanged (the level is put back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from fractalflow.config import JsonConfig


@dataclass(frozen=True)
class CacheSettings(JsonConfig):
    """Which level to cache (``depth`` 1: the inner level of the outermost one, the larger of
    the inner levels), at most ``every - 1`` reuses between two computations (``every`` 1:
    always compute), and ``drift``: recompute when the level's input changed by more than this
    relative L2 since it was last computed (``inf``: the schedule alone decides)."""

    depth: int = 1
    every: int = 2
    drift: float = math.inf

    def __post_init__(self) -> None:
        if self.depth < 1 or self.every < 1 or not self.drift >= 0:
            raise ValueError(
                f"invalid CacheSettings: depth ({self.depth}) and every ({self.every}) must be >= 1 "
                f"and drift ({self.drift}) >= 0"
            )


class CachedLevel(nn.Module):
    """Stands in for ``level`` while caching: computes it, or returns its last output."""

    def __init__(self, level: nn.Module, settings: CacheSettings):
        super().__init__()
        self.level, self.settings = level, settings
        self.input: Tensor | None = None
        self.output: Tensor | None = None
        self.reuses_in_a_row = 0
        self.computed = self.reused = 0

    def drifted(self, x: Tensor) -> bool:
        if math.isinf(self.settings.drift):
            return False
        change = (x - self.input).flatten(1).norm(dim=1) / self.input.flatten(1).norm(dim=1).clamp_min(1e-8)
        return bool(change.max() > self.settings.drift)

    def forward(self, x: Tensor, *context) -> Tensor:
        fresh = (
            self.output is None
            or x.shape != self.input.shape
            or self.reuses_in_a_row >= self.settings.every - 1
            or self.drifted(x)
        )
        if not fresh:
            self.reuses_in_a_row += 1
            self.reused += 1
            return self.output
        self.input, self.output = x, self.level(x, *context)
        self.reuses_in_a_row = 0
        self.computed += 1
        return self.output


class AdaptiveDepth:
    """Context manager: step caching of ``model``'s level at ``settings.depth`` (see the
    module docstring). ``report()`` says how often the level was computed and reused."""

    def __init__(self, model: nn.Module, settings: CacheSettings):
        levels = model.config.num_levels
        if settings.depth >= levels:
            raise ValueError(f"CacheSettings.depth={settings.depth}: this model's inner levels are 1..{levels - 1}")
        self.parent = model.body  # the level whose inner level is cached
        for _ in range(settings.depth - 1):
            self.parent = self.parent.inner
        self.cached = CachedLevel(self.parent.inner, settings)

    def __enter__(self) -> AdaptiveDepth:
        self.parent.inner = self.cached
        return self

    def __exit__(self, *exc) -> None:
        self.parent.inner = self.cached.level

    def report(self) -> dict[str, int]:
        return {"computed": self.cached.computed, "reused": self.cached.reused}
