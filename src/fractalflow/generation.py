"""GenerationConfig: every sampling setting of a generation, validated in one place.

The pipeline, the inference engine, the server's request schema, the CLI's options and the
eval all take their settings, defaults, limits and help text from this one dataclass.
``generation_config.json`` in a model folder holds that model's defaults
(:meth:`GenerationConfig.for_model`); a call's own settings go over them (:meth:`merged`).

It lives beside ``config.py`` rather than in it: its rules come from the sampler
(:class:`~fractalflow.flow.refine.RefineSettings`) and step caching
(:func:`~fractalflow.model.adaptive_policies.check_adaptive`), which import ``config.py`` themselves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fractalflow.config import MAX_GUIDANCE, MAX_SIDE, MAX_STEPS, MAX_TIME_SHIFT, JsonConfig
from fractalflow.flow.refine import NAMED_RESOLUTIONS, RefineSettings
from fractalflow.flow.samplers import SAMPLERS, guidance_interval_problem
from fractalflow.model.adaptive_policies import check_adaptive
from fractalflow.plugins import registry

GENERATION_CONFIG_NAME = "generation_config.json"
MAX_SCALES = 8  # scales one coarse-to-fine generation may pass through
MAX_POSTPROCESSORS = 4
MAX_GRID_JITTER = 16  # pixels: half a 32 px window of the default model; more moves the picture, not the grid
# a prompt must hold one character that str.strip() keeps (the pipeline's test); as a pattern
# that pydantic's Rust regex reads alike, whose \s lacks the separators \x1c-\x1f that Python strips
PROMPT_PATTERN = r"[^\s\x1c-\x1f]"


def setting(default: Any, help: str, **limits: float) -> Any:
    """A GenerationConfig field: its default, the help the CLI and the HTTP schema show, and
    numeric ``limits`` (``ge``, ``gt``, ``le``) that the validation and the schema share."""
    return field(default=default, metadata={"help": help, **limits})


@dataclass(frozen=True)
class GenerationConfig(JsonConfig):
    """How to sample: steps, guidance, the time grid, sampler, the size or coarse-to-fine
    resolution, early stopping and step caching. Seeds and the number of images belong to a request, not here.

    ``size`` samples at one scale; ``resolution`` refines coarse to fine through ``scales``;
    with neither, the model's ``standard`` resolution (coarse to fine from the smallest size it
    was trained at up to its own size). ``adaptive`` also takes
    :class:`~fractalflow.model.adaptive.CacheSettings` from Python.
    """

    steps: int = setting(20, "sampling steps of a full noise-to-image trajectory", ge=1, le=MAX_STEPS)
    guidance: float = setting(
        3.0, "classifier-free guidance scale (1: none, 0: unconditional)", ge=0.0, le=MAX_GUIDANCE
    )
    guidance_interval: tuple[float, float] | None = setting(
        None,
        "guide only while the flow time t (1: noise, 0: image) lies in low:high, e.g. 0.3:1; elsewhere the "
        "conditional model alone, at half the cost (unset: every step)",
    )
    time_shift: float = setting(
        1.0,
        "warp the even time grid to s*t/(1+(s-1)*t): above 1 more steps at high noise, where the layout is decided "
        "(SD3 samples at 3; 1: even)",
        gt=0.0,
        le=MAX_TIME_SHIFT,
    )
    sampler: str = setting("euler", f"sampler: {', '.join(SAMPLERS)} or a sampler plugin (fractalflow plugins list)")
    size: int | None = setting(
        None, "sample at one scale of this side in pixels (a multiple of the model's downsampling)", ge=1, le=MAX_SIDE
    )
    resolution: str | int | None = setting(
        None,
        f"refine coarse to fine up to {', '.join(NAMED_RESOLUTIONS)} "
        f"({', '.join(f'{s:g}x' for s in NAMED_RESOLUTIONS.values())} the model's size) or a size in pixels",
    )
    scales: tuple[float, ...] | None = setting(
        None, "scales to pass through with resolution, relative to the model's size, e.g. 0.5,1,2"
    )
    early_stop: float = setting(
        0.0,
        "end a scale once the image estimate changes by less than this per step, e.g. 0.02 (0: off)",
        ge=0.0,
        le=1.0,
    )
    upscale_strength: float | None = setting(
        None, "how much of the image each scale above the model's size redraws", gt=0.0, le=1.0
    )
    refine_steps: int | None = setting(
        None,
        "steps of each scale after the first in coarse-to-fine sampling, like A1111's hires steps "
        "(unset: steps times the flow time the scale starts from)",
        ge=1,
        le=MAX_STEPS,
    )
    postprocess: tuple[str, ...] = setting(
        (), "image postprocessor plugins to apply in order, comma-separated (fractalflow plugins list)"
    )
    grid_jitter: int = setting(
        0,
        "shift the image by up to this many pixels before each step and back after, so the network's token "
        "grid falls elsewhere on every step and leaves no seams (0: off; with it on, adaptive keeps its fewer steps "
        "but not its caches)",
        ge=0,
        le=MAX_GRID_JITTER,
    )
    adaptive: str | float = setting(
        "off",
        "spend less compute on steps that need less: off, auto (the model's calibrated default) or a target "
        "speed-up such as 2 (the largest calibrated one not above it, from the policies calibrated for the image's "
        "size)",
    )

    def __post_init__(self) -> None:
        problems = [problem for f in dataclasses.fields(self) if (problem := out_of_limits(f, getattr(self, f.name)))]
        if self.size is not None and self.resolution is not None:
            problems.append("give size (one scale) or resolution (coarse to fine), not both")
        if self.guidance_interval is not None and (problem := guidance_interval_problem(self.guidance_interval)):
            problems.append(f"guidance_interval={self.guidance_interval}: {problem}")
        if self.scales is not None and not 1 <= len(self.scales) <= MAX_SCALES:
            problems.append(f"scales={self.scales}: give 1 to {MAX_SCALES} scales")
        if len(self.postprocess) > MAX_POSTPROCESSORS:
            problems.append(f"postprocess={self.postprocess}: at most {MAX_POSTPROCESSORS} postprocessors")
        for name in self.postprocess[:MAX_POSTPROCESSORS]:
            try:
                registry().get("postprocess", name)
            except ValueError as error:
                problems.append(str(error))
        try:
            check_adaptive(self.adaptive)
            if not problems:  # the sampler's own rules for resolution, scales and sampler name
                self.refine_settings("standard")
        except ValueError as error:
            problems.append(str(error).removeprefix("invalid RefineSettings: "))
        if problems:
            raise ValueError("invalid GenerationConfig: " + "; ".join(problems))

    def refine_settings(self, default_resolution: str | int, default_scales: tuple[float, ...] = (1.0,)):
        """These settings as the :class:`RefineSettings` of a model whose own resolution is
        ``default_resolution`` and whose default scales are ``default_scales``."""
        resolution = self.resolution if self.resolution is not None else (self.size or default_resolution)
        return RefineSettings(
            resolution=resolution,
            scales=tuple(self.scales or default_scales),
            steps=self.steps,
            early_stop=self.early_stop,
            sampler=self.sampler,
            upscale_strength=self.upscale_strength,
            refine_steps=self.refine_steps,
            time_shift=self.time_shift,
        )

    def merged(self, **overrides: Any) -> GenerationConfig:
        """These settings with ``overrides`` over them (None leaves a setting as it is). A size
        given alone replaces a resolution and the other way round, so a call's ``size=128``
        works whatever the defaults say. Unknown names get a clear error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown generation setting(s) {unknown}; allowed: {sorted(known)}")
        given = {name: value for name, value in overrides.items() if value is not None}
        if "size" in given and "resolution" not in given:
            given["resolution"] = None
        if "resolution" in given and "size" not in given:
            given["size"] = None
        return dataclasses.replace(self, **given)

    @classmethod
    def for_model(cls, folder: str | Path) -> GenerationConfig:
        """The defaults in ``folder/generation_config.json``, or the library's where it has none."""
        path = Path(folder) / GENERATION_CONFIG_NAME
        return cls.load_json(path) if path.is_file() else cls()

    def save(self, folder: str | Path) -> None:
        if not isinstance(self.adaptive, (str, int, float)):
            raise ValueError("a saved GenerationConfig needs adaptive 'off', 'auto' or a speed-up, not CacheSettings")
        self.save_json(Path(folder) / GENERATION_CONFIG_NAME)

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings for metadata (CacheSettings as their fields)."""
        values = self.to_dict()
        if not isinstance(self.adaptive, (str, int, float)):
            values["adaptive"] = self.adaptive.to_dict()
        return values


def out_of_limits(spec: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` breaks the limits in the field's metadata (a whole number where the field
    is one, within ``ge``/``gt``/``le``), or None."""
    limits = spec.metadata
    if value is None or not {"ge", "gt", "le"} & limits.keys():
        return None
    whole = str(spec.type).startswith("int")
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not math.isfinite(value):
        return f"{spec.name}={value!r} must be {'a whole number' if whole else 'a finite number'}"
    below = value < limits["ge"] if "ge" in limits else value <= limits.get("gt", -math.inf)
    if below or value > limits.get("le", math.inf):
        return f"{spec.name}={value!r} must be {range_text(limits)}"
    return None


def range_text(limits: dict[str, float]) -> str:
    """``from 1 to 1000`` or ``in (0, 1]``: the limits of a field, as its errors and help state them."""
    if "gt" in limits:
        return f"in ({limits['gt']:g}, {limits['le']:g}]"
    return f"from {limits['ge']:g} to {limits['le']:g}"
