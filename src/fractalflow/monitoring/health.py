"""Health checks: every training step before it is taken, and every generated image.

**Training.**
A step is **skipped** (no update, no EMA, the step counter stays) when its loss or gradient
norm is not finite, when the gradient norm (before clipping) is above ``max_grad_norm``, or
when the loss spikes: above the mean plus ``spike_sigmas`` standard deviations of the last
``window`` accepted losses (judged once ``warmup`` losses are in). After
``skips_before_rollback`` skips in a row the trainer rolls back to its newest intact
checkpoint with the learning rate scaled by ``rollback_lr_factor``, and draws other batches
from there; after ``max_rollbacks`` rollbacks it gives up with ``TrainingDiverged``. Every
event is kept in ``TrainingHealth.events`` for the trainer to log.

**Images.** :func:`image_health` flags an image that holds non-finite values, is blank (one
flat colour), or overshoots the pixel range in more than 5 % of its values; the pipeline puts
the result in every generation's metadata.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from fractalflow.config import JsonConfig, check_ranges


@dataclass(frozen=True)
class HealthSettings(JsonConfig):
    """When a training step is skipped and when the run rolls back (see the module docstring)."""

    window: int = 200
    warmup: int = 50
    spike_sigmas: float = 8.0
    max_grad_norm: float = 1e4
    skips_before_rollback: int = 5
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3

    def __post_init__(self) -> None:
        check_ranges(
            "HealthSettings",
            [
                ("window", self.window, ">= 2", self.window >= 2),
                ("warmup", self.warmup, f"from 2 to window ({self.window})", 2 <= self.warmup <= self.window),
                ("spike_sigmas", self.spike_sigmas, "a number > 0", self.spike_sigmas > 0),
                ("max_grad_norm", self.max_grad_norm, "a number > 0", self.max_grad_norm > 0),
                ("skips_before_rollback", self.skips_before_rollback, ">= 1", self.skips_before_rollback >= 1),
                (
                    "rollback_lr_factor",
                    self.rollback_lr_factor,
                    "in (0, 1]",
                    0 < self.rollback_lr_factor <= 1,
                ),
                ("max_rollbacks", self.max_rollbacks, ">= 0", self.max_rollbacks >= 0),
            ],
        )


class TrainingHealth:
    """Judges each step's loss and gradient norm; counts skips and rollbacks."""

    def __init__(self, settings: HealthSettings | None = None):
        self.settings = settings or HealthSettings()
        self.losses: deque[float] = deque(maxlen=self.settings.window)
        self.skips_in_a_row = 0
        self.rollbacks = 0
        self.events: list[dict] = []

    def problem(self, loss: float, grad_norm: float) -> str | None:
        """Why a step with this loss and (pre-clipping) gradient norm must not be taken, or None."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if not math.isfinite(grad_norm):
            return f"non-finite gradients (norm {grad_norm})"
        if grad_norm > self.settings.max_grad_norm:
            return f"exploding gradients (norm {grad_norm:.3g} > {self.settings.max_grad_norm:g})"
        if len(self.losses) >= self.settings.warmup:
            mean, spread = statistics.fmean(self.losses), statistics.pstdev(self.losses)
            limit = mean + self.settings.spike_sigmas * spread
            if loss > limit:
                return f"loss spike ({loss:.4g} > {limit:.4g}, the mean + {self.settings.spike_sigmas:g} sigma)"
        return None

    def judge(self, step: int, loss: float, grad_norm: float) -> bool:
        """True if the step may be taken; else the skip is recorded."""
        problem = self.problem(loss, grad_norm)
        if problem is None:
            self.losses.append(loss)
            self.skips_in_a_row = 0
            return True
        self.skips_in_a_row += 1
        self.events.append({"step": step, "event": "skipped", "reason": problem})
        return False

    @property
    def needs_rollback(self) -> bool:
        return self.skips_in_a_row >= self.settings.skips_before_rollback

    def rolled_back(self, from_step: int, to_step: int, lr_scale: float) -> None:
        self.rollbacks += 1
        self.skips_in_a_row = 0
        self.losses.clear()
        self.events.append({"step": from_step, "event": "rolled back", "to_step": to_step, "lr_scale": lr_scale})


BLANK_STD = 0.01  # a picture whose pixels spread less than this (on [-1, 1]) is flat
OUT_OF_RANGE = 1.1  # sampled values beyond this (before clamping to [-1, 1]) mean an overshoot
MAX_OUT_OF_RANGE_SHARE = 0.05  # an image with more of its values overshooting is flagged


def image_health(images: Tensor) -> list[dict]:
    """Per image of a ``(B, C, H, W)`` batch as sampled (before clamping to [-1, 1]): whether
    every value is finite, whether it is blank (one flat colour), the share of values that
    overshoot the range, and ``flagged`` when any of these is wrong."""
    flat = images.detach().float().flatten(1)  # (B, C*H*W)
    finite = torch.isfinite(flat).all(dim=1)
    safe = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    spread = safe.clamp(-1, 1).std(dim=1)
    overshoot = (safe.abs() > OUT_OF_RANGE).float().mean(dim=1)
    reports = []
    for ok, std, share in zip(finite.tolist(), spread.tolist(), overshoot.tolist()):
        blank = ok and std < BLANK_STD
        report = {"finite": ok, "blank": blank, "out_of_range": round(share, 4)}
        reports.append({**report, "flagged": not ok or blank or share > MAX_OUT_OF_RANGE_SHARE})
    return reports


IMAGE_FLAGS = ("non_finite", "blank", "out_of_range", "probable_hallucination", "prompt_drifted")


class ImageHealthWindow:
    """The health reports of the last ``size`` generated images, summarised for a server's
    ``/v1/health``: the share with each flag, and alerts where a share passes its limit
    (``limits``: flag -> largest share that is still healthy)."""

    def __init__(self, size: int, limits: dict[str, float]):
        unknown = sorted(set(limits) - set(IMAGE_FLAGS))
        if unknown:
            raise ValueError(f"unknown image flags {unknown}; allowed: {list(IMAGE_FLAGS)}")
        self.reports: deque[dict] = deque(maxlen=size)
        self.limits = limits
        self._lock = threading.Lock()

    def add(self, reports: list[dict]) -> None:
        with self._lock:
            self.reports.extend(reports)

    @staticmethod
    def flagged(report: dict, flag: str) -> bool:
        """Whether one image's health ``report`` carries ``flag`` (one of IMAGE_FLAGS)."""
        if flag == "non_finite":
            return not report.get("finite", True)
        if flag == "out_of_range":
            return report.get("out_of_range", 0.0) > MAX_OUT_OF_RANGE_SHARE
        return bool(report.get(flag))

    def summary(self) -> dict:
        with self._lock:
            reports = list(self.reports)
        shares = {
            flag: sum(self.flagged(r, flag) for r in reports) / len(reports) if reports else 0.0 for flag in IMAGE_FLAGS
        }
        alerts = [
            f"{flag}: {shares[flag]:.1%} of the last {len(reports)} images, above {limit:.1%}"
            for flag, limit in self.limits.items()
            if reports and shares[flag] > limit
        ]
        return {
            "status": "alert" if alerts else "ok",
            "images": len(reports),
            "window": self.reports.maxlen,
            "shares": shares,
            "limits": self.limits,
            "alerts": alerts,
        }
