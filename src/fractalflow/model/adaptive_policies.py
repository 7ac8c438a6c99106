"""A model's calibrated adaptive-compute policies (``adaptive.json``) and how a call's
``adaptive`` value ("off", "auto", a speed-up) becomes the :class:`CacheSettings` it runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fractalflow.config import read_json_object
from fractalflow.flow.samplers import time_grid
from fractalflow.model.adaptive import OFF, CacheSettings

ADAPTIVE_FILE = "adaptive.json"  # next to a model's weights: its calibrated policies
MAX_SPEEDUP = 8.0


@dataclass(frozen=True)
class AdaptivePolicies:
    """A model's calibrated step-caching policies: the :class:`CacheSettings` that reached
    each target speed-up at the least quality loss on training captions, and the target
    ``adaptive="auto"`` uses (None: auto stays off). Written by ``fractalflow calibrate``.

    ``sizes`` holds policies calibrated for larger images (coarse to fine), by final side in
    pixels: there a scale after the first costs several of the first scale's steps, so what
    pays differs. An image uses the policies of the largest calibrated size not above its own
    (:meth:`for_size`), these at the model's own size."""

    policies: dict[float, CacheSettings]
    auto: float | None = None
    sizes: dict[int, AdaptivePolicies] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.auto is not None and self.auto not in self.policies:
            raise ValueError(f"auto={self.auto} is none of the calibrated targets {sorted(self.policies)}")

    @classmethod
    def from_dict(cls, values: dict) -> AdaptivePolicies:
        rows = values.get("policies")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "target" in r for r in rows):
            raise ValueError(f"{ADAPTIVE_FILE}: 'policies' must be a list of {{target, settings}} objects")
        policies = {float(r["target"]): CacheSettings.from_dict(r["settings"]) for r in rows}
        sizes = values.get("sizes", {})
        if not isinstance(sizes, dict) or not all(str(size).isdigit() and int(size) > 0 for size in sizes):
            raise ValueError(f"{ADAPTIVE_FILE}: 'sizes' must map image sides in pixels to policies")
        by_size = {int(size): cls.from_dict(part) for size, part in sizes.items()}
        return cls(policies, values.get("auto"), dict(sorted(by_size.items())))

    def to_dict(self) -> dict:
        rows = [{"target": target, "settings": self.policies[target].to_dict()} for target in sorted(self.policies)]
        sizes = {str(size): part.to_dict() for size, part in sorted(self.sizes.items())}
        return {"auto": self.auto, "policies": rows} | ({"sizes": sizes} if sizes else {})

    def for_size(self, size: int) -> AdaptivePolicies:
        """The policies for images of ``size`` px: those calibrated at the largest size not above
        it, else these."""
        fitting = [calibrated for calibrated in self.sizes if calibrated <= size]
        return self.sizes[max(fitting)] if fitting else self

    @classmethod
    def read(cls, folder: str | Path) -> AdaptivePolicies | None:
        """The policies in ``folder/adaptive.json``; None when the model was never calibrated."""
        path = Path(folder) / ADAPTIVE_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(read_json_object(path))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def choose(self, adaptive: str | float) -> tuple[CacheSettings, float | None]:
        """The settings for ``adaptive`` ("auto" or a speed-up) and the calibrated target they
        reach: the largest target not above the asked speed-up (off below the smallest)."""
        if adaptive == "auto":
            return (OFF, None) if self.auto is None else (self.policies[self.auto], self.auto)
        reachable = [target for target in self.policies if target <= adaptive]
        if not reachable:
            return OFF, None
        return self.policies[max(reachable)], max(reachable)


def check_adaptive(adaptive: object) -> None:
    """Refuse anything but "off", "auto", a speed-up from 1 to MAX_SPEEDUP or CacheSettings."""
    if isinstance(adaptive, CacheSettings) or adaptive in ("off", "auto"):
        return
    if isinstance(adaptive, (int, float)) and not isinstance(adaptive, bool) and 1 <= adaptive <= MAX_SPEEDUP:
        return
    raise ValueError(
        f"adaptive={adaptive!r}: allowed are 'off', 'auto', a speed-up from 1 to {MAX_SPEEDUP:g}, or CacheSettings"
    )


MIN_STEPS = 2  # a policy's step_fraction never leaves fewer


def policy_steps(steps: int, settings: CacheSettings) -> int:
    """The sampling steps a call that asked for ``steps`` runs under ``settings``."""
    return min(steps, max(MIN_STEPS, round(steps * settings.step_fraction)))


def policy_refine_steps(asked: int | None, settings: CacheSettings) -> int | None:
    """The steps of each scale after the first that a call asking ``asked`` (None: as planned)
    runs under ``settings``: the fewer of the two."""
    given = [steps for steps in (asked, settings.refine_steps) if steps is not None]
    return min(given, default=None)


def policy_guidance(
    interval: tuple[float, float] | None, steps: int, kept_steps: int, time_shift: float
) -> tuple[float, float] | None:
    """How a run that a policy cut from ``steps`` to ``kept_steps`` sampling steps guides the
    step where the full run's guidance ends: ``(t, share)``, the time that step starts at and
    the share of it the full run guides (:func:`~fractalflow.flow.samplers.guided_velocity`'s
    ``partial``); None when a step of the shorter grid ends there too, or nothing is cut.

    A step is guided when the time it starts at lies in ``interval``, so the stretch of flow
    time that is guided ends where the last guided step ends, and that moves with the grid. On
    the default model's grid (time shift 3, interval [0.7, 1]) 20 steps guide down to
    t = 0.667; cut to 14 steps, guidance would stop at 0.692, and cut to 8, at 0.643. Guiding
    the straddling step with its share of the guidance keeps the guided stretch the full run's.
    Only the interval's low end moves this way: its high end is 1 in every model here."""
    if interval is None or kept_steps >= steps:
        return None
    low, high = interval
    full = time_grid(steps, time_shift).tolist()  # the float32 times the sampler compares
    guided = [i for i, t in enumerate(full[:-1]) if low <= t <= high]
    if not guided:
        return None
    end = full[guided[-1] + 1]  # where the full run's guidance stops
    kept = time_grid(kept_steps, time_shift).tolist()
    for start, stop in zip(kept[:-1], kept[1:]):
        if stop < end < start:
            return start, (start - end) / (start - stop)
    return None
