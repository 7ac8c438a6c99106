"""ProgressiveRefiner: coarse-to-fine sampling with one model at every scale.

Sampling starts from noise at the smallest scale and runs to a clean image there; that
image is upsampled to the next scale, re-noised to a flow time that hides the detail it
lacks, and sampling continues from that time at the new size. Small scales are cheap
(cost grows with pixels), so the layout is decided where steps cost little and the
large scales only add detail. Scales above 1.0 go beyond the size the model was trained
at: pixel upsampling plus a short re-noise/denoise pass (no latent upscaling).

After every step the current clean-image estimate goes to the callback as a
:class:`ProgressEvent` (downsampled to at most ``preview_size`` pixels), and a scale can
stop early once that estimate has stopped changing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fractalflow.config import JsonConfig
from fractalflow.events import ProgressEvent
from fractalflow.flow.samplers import Velocity, get_sampler, new_run, time_grid

# final scale of each named resolution, relative to the size the model was trained at
NAMED_RESOLUTIONS = {"preview": 0.25, "standard": 1.0, "high": 2.0, "ultra": 4.0}
# Starting at half the trained size: a 0.25 first scale costs alignment (top-5 0.018 vs
# 0.089 at equal cost, benchmarks/refine.py) because the model never saw 16 px images.
DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)


def default_scales(native_size: int, trained_sizes: tuple[int, ...] = ()) -> tuple[float, ...]:
    """DEFAULT_SCALES from the smallest size the model was trained at (all of them when the
    sizes are unknown): a model trained at 64 px only draws worse from a 32 px start (FD 1.23x
    the plain 64 px pipeline, benchmarks/results/bench-cpu.json)."""
    smallest = min(trained_sizes, default=0)
    return tuple(s for s in DEFAULT_SCALES if native_size * s >= smallest) or (1.0,)


def renoise_time(ratio: float) -> float:
    """Flow time to re-noise an image upsampled by ``ratio`` per side: ``1 - 1/ratio``.

    Upsampling by 2 leaves a quarter of the frequencies an image of the new size has;
    at t = 0.5 noise as strong as the signal covers what is missing (0.75 for 4x).
    """
    return 1.0 - 1.0 / ratio


@dataclass(frozen=True)
class Stage:
    """One scale of a refinement: sample at ``size`` px for ``steps`` steps from flow time ``start``."""

    size: int
    steps: int
    start: float


@dataclass(frozen=True)
class RefineSettings(JsonConfig):
    """How to refine: the final ``resolution`` (a name in NAMED_RESOLUTIONS or a size in
    pixels, as an int or a string of digits), the ``scales`` to pass through (relative to
    the model's trained size; those up to the final one are used), ``steps`` for a full
    noise-to-image trajectory (a scale that starts at time t gets ``round(steps * t)``, at
    least ``min_stage_steps``), and ``early_stop``: stop a scale when the clean-image estimate changes by less than this
    (relative L2) between two steps; 0 turns it off. ``time_shift`` warps each scale's even
    time grid to ``s t / (1 + (s - 1) t)``, so ``s > 1`` spends more steps at high noise
    (SD3's shift; a scale starting at time t0 takes the warped grid times t0). ``renoise`` overrides the start time
    of every scale after the first; ``upscale_strength`` that of the scales above the
    trained size (like img2img strength: how much of the upsampled image is redrawn).
    ``refine_steps`` fixes the steps of every scale after the first (A1111's hires steps)."""

    resolution: str | int = "standard"
    scales: tuple[float, ...] = DEFAULT_SCALES
    steps: int = 20
    min_stage_steps: int = 2
    renoise: float | None = None
    upscale_strength: float | None = None
    refine_steps: int | None = None
    early_stop: float = 0.0
    sampler: str = "euler"
    time_shift: float = 1.0
    preview_size: int = 64

    def __post_init__(self) -> None:
        problems = []
        if (
            isinstance(self.resolution, str)
            and not self.resolution.isdigit()
            and self.resolution not in NAMED_RESOLUTIONS
        ):
            problems.append(
                f"unknown resolution {self.resolution!r}; use one of {list(NAMED_RESOLUTIONS)} or a size in pixels"
            )
        if isinstance(self.resolution, int) and self.resolution < 1:
            problems.append(f"resolution={self.resolution} px must be positive")
        if (
            not self.scales
            or any(not (0 < s < math.inf) for s in self.scales)
            or list(self.scales) != sorted(set(self.scales))
        ):
            problems.append(f"scales={self.scales} must be positive, finite and strictly increasing")
        if self.steps < 1:
            problems.append(f"steps={self.steps}: at least 1 sampling step is required")
        if self.min_stage_steps < 1:
            problems.append(f"min_stage_steps={self.min_stage_steps} must be >= 1")
        if self.refine_steps is not None and self.refine_steps < 1:
            problems.append(f"refine_steps={self.refine_steps} must be >= 1")
        for name in ("renoise", "upscale_strength"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                problems.append(f"{name}={value} must be in (0, 1]")
        if not 0 <= self.early_stop < math.inf:
            problems.append(f"early_stop={self.early_stop} must be a finite number >= 0")
        if not 0 < self.time_shift < math.inf:
            problems.append(f"time_shift={self.time_shift} must be a finite number > 0")
        if problems:
            raise ValueError("invalid RefineSettings: " + "; ".join(problems))
        get_sampler(self.sampler)


def resolution_size(resolution: str | int, native_size: int, multiple: int) -> int:
    """Side in pixels of ``resolution`` (a name in NAMED_RESOLUTIONS, or a size as an int or a
    string of digits) for a model trained at ``native_size`` that needs multiples of ``multiple``."""
    if isinstance(resolution, str) and not resolution.isdigit():
        if resolution not in NAMED_RESOLUTIONS:
            raise ValueError(
                f"unknown resolution {resolution!r}; allowed: {list(NAMED_RESOLUTIONS)} or a size in pixels"
            )
        return round(native_size * NAMED_RESOLUTIONS[resolution] / multiple) * multiple
    size = int(resolution)
    if size % multiple or size < multiple:
        raise ValueError(f"{size} px is not allowed: use a positive multiple of {multiple}")
    return size


def plan_stages(settings: RefineSettings, native_size: int, multiple: int) -> list[Stage]:
    """The scales a refinement passes through, as sizes (multiples of ``multiple``), steps and start times."""
    final = resolution_size(settings.resolution, native_size, multiple)
    sizes = sorted({round(native_size * s / multiple) * multiple for s in settings.scales} - {0})
    sizes = [s for s in sizes if s < final] + [final]
    stages, previous = [], None
    for size in sizes:
        if previous is None:
            start = 1.0
        elif size > native_size and settings.upscale_strength is not None:
            start = settings.upscale_strength
        else:
            start = settings.renoise if settings.renoise is not None else renoise_time(size / previous)
        steps = max(settings.min_stage_steps, round(settings.steps * start))
        if previous is not None and settings.refine_steps is not None:
            steps = settings.refine_steps
        stages.append(Stage(size, steps, start))
        previous = size
    return stages


def stage_cost(stages: list[Stage], evaluations_per_step: int = 1) -> float:
    """Velocity evaluations weighted by pixels, in units of one evaluation at the last stage's size."""
    final = stages[-1].size ** 2
    return sum(evaluations_per_step * s.steps * s.size**2 / final for s in stages)


def upsample(images: Tensor, size: int) -> Tensor:
    """Bicubic upsampling to ``size`` px, clamped to the data range [-1, 1]."""
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def relative_change(new: Tensor, old: Tensor) -> float:
    """Largest, over the batch, relative L2 change between two clean-image estimates."""
    difference = (new - old).flatten(1).norm(dim=1)
    return float((difference / old.flatten(1).norm(dim=1).clamp_min(1e-8)).max())


@dataclass
class RefineReport:
    """What a refinement did: steps planned and run per stage, and the seconds it took."""

    stages: list[Stage]
    steps_run: list[int]
    seconds: float

    @property
    def steps_saved(self) -> int:
        return sum(s.steps for s in self.stages) - sum(self.steps_run)


class ProgressiveRefiner:
    """Runs a coarse-to-fine refinement with a size-agnostic velocity ``v(x, t)``.

    ``noise(size)`` returns the batch's noise at a size: pass per-image seeded generators
    so an image does not depend on what else is in the batch (see :func:`seeded_noise`).
    """

    def __init__(self, settings: RefineSettings, native_size: int, multiple: int):
        self.settings = settings
        self.stages = plan_stages(settings, native_size, multiple)
        self.sampler = get_sampler(settings.sampler)

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)

    def preview(self, x0: Tensor) -> Tensor:
        if x0.shape[-1] > self.settings.preview_size:
            x0 = F.interpolate(x0, size=self.settings.preview_size, mode="area")
        return x0.detach().float().clamp(-1, 1).cpu()

    @torch.no_grad()
    def run(
        self,
        velocity: Velocity,
        noise: Callable[[int], Tensor],
        callback: Callable[[ProgressEvent], None] | None = None,
        exact: Callable[[], bool] | None = None,
    ) -> tuple[Tensor, RefineReport]:
        """Sample every stage. ``exact()``, asked after each step, says whether that step's
        velocity was computed in full (False when step caching served stored features):
        early stopping judges the change per step between exact steps only, so the jitter of
        reused features neither delays nor fakes convergence."""
        started = time.perf_counter()
        total, done, steps_run = self.total_steps, 0, []
        image: Tensor | None = None
        for stage in self.stages:
            fresh = noise(stage.size)
            x = fresh if image is None else torch.lerp(upsample(image, stage.size), fresh, stage.start)
            times = time_grid(stage.steps, self.settings.time_shift, x.device) * stage.start
            settled, ran, settled_at = None, 0, 0  # the last exact clean-image estimate, and its step
            step = new_run(self.sampler)  # a multistep sampler's history starts again at each scale
            for i in range(stage.steps):
                x, x0 = step(velocity, x, times[i], times[i + 1])
                ran += 1
                if callback is not None:
                    elapsed = time.perf_counter() - started
                    callback(ProgressEvent(f"{stage.size}px", done + ran, total, elapsed, self.preview(x0)))
                if exact is not None and not exact():
                    continue
                previous, gap, settled, settled_at = settled, ran - settled_at, x0, ran
                threshold = self.settings.early_stop
                if threshold and previous is not None and relative_change(x0, previous) < threshold * gap:
                    x = x0
                    break
            done += ran
            steps_run.append(ran)
            image = x
        return image, RefineReport(self.stages, steps_run, time.perf_counter() - started)


def seeded_noise(seeds: list[int], channels: int, device: torch.device | str) -> Callable[[int], Tensor]:
    """``noise(size)`` for a batch: image i draws from its own generator seeded with ``seeds[i]``,
    one draw per stage in order, so results do not depend on the batch they run in."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def noise(size: int) -> Tensor:
        return torch.stack([torch.randn(channels, size, size, generator=g) for g in generators]).to(device)

    return noise


def starting_with(latents: Tensor, noise: Callable[[int], Tensor]) -> Callable[[int], Tensor]:
    """``noise`` whose first draw (the first scale's starting noise) is ``latents``, as
    diffusers' ``latents=``; later scales draw from ``noise``."""
    given = [latents]

    def draw(size: int) -> Tensor:
        return given.pop() if given else noise(size)

    return draw
