"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from fractalflow.config import MAX_GUIDANCE, MAX_STEPS
from fractalflow.generation import MAX_POSTPROCESSORS, PROMPT_PATTERN, GenerationConfig
from fractalflow.model.adaptive_policies import MAX_SPEEDUP
from fractalflow.plugins import registry
from fractalflow.serving.config import ServerConfig

JobState = Literal["queued", "running", "done", "error", "cancelled"]


# the GenerationConfig fields a request may set; the others keep the served model's defaults:
# the server draws at named resolutions or pixel sizes (not size, scales, upscale_strength),
# and guidance_interval's rule (low < high) is one a JSON schema cannot state
SERVED_SETTINGS = (
    "resolution",
    "steps",
    "guidance",
    "time_shift",
    "grid_jitter",
    "early_stop",
    "sampler",
    "postprocess",
    "adaptive",
)


class RequestBase(BaseModel):
    """One generation job: ``num_images`` images of ``prompt``, image i with seed ``seed + i``,
    sampled with the settings of :class:`~fractalflow.generation.GenerationConfig` named in
    ``SERVED_SETTINGS`` (their limits, defaults and help come from it)."""

    prompt: str = Field(min_length=1, description="what to draw")
    seed: int | None = Field(None, ge=0, lt=2**31, description="random when left out; returned in metadata")
    num_images: int = Field(1, ge=1)
    model: str | None = Field(
        None, max_length=100, description="the served variant to use (A/B servers); left out: the client's share"
    )

    model_config = {"extra": "forbid"}

    @model_validator(mode="before")
    @classmethod
    def no_booleans(cls, values: Any) -> Any:
        """JSON ``true`` is no step count or seed (pydantic would read it as 1)."""
        if isinstance(values, dict):
            for name, value in values.items():
                if isinstance(value, bool):
                    raise ValueError(f"{name}={json.dumps(value)}: a number or a string is expected, not a boolean")
        return values

    @model_validator(mode="after")
    def valid_generation_config(self) -> RequestBase:
        """The rules across settings (GenerationConfig's own validation), as a 422."""
        self.generation_config(GenerationConfig())
        return self

    def generation_config(self, defaults: GenerationConfig) -> GenerationConfig:
        """``defaults`` with this request's settings over them."""
        values = {name: getattr(self, name) for name in SERVED_SETTINGS}
        return defaults.merged(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def setting_field(name: str, default: Any, **limits: float) -> tuple[Any, Any]:
    """``(type, Field)`` of the GenerationConfig field ``name`` with its help and numeric limits,
    the upper one lowered to ``limits['le']`` where given."""
    spec = GENERATION_FIELDS[name]
    bounds = {k: v for k, v in spec.metadata.items() if k in ("ge", "gt", "le")} | limits
    kind = int if str(spec.type).startswith("int") else float
    extra = {} if kind is int else {"allow_inf_nan": False}
    return kind, Field(default, description=spec.metadata["help"], **bounds, **extra)


GENERATION_FIELDS = {spec.name: spec for spec in dataclasses.fields(GenerationConfig)}
SPEEDUP = Annotated[float, Field(ge=1.0, le=MAX_SPEEDUP, allow_inf_nan=False)]


def served_settings(
    defaults: GenerationConfig,
    resolution: Any,
    max_steps: int = MAX_STEPS,
    max_guidance: float = MAX_GUIDANCE,
    samplers: Any = str,
    postprocessors: Any = str,
) -> dict[str, tuple[Any, Any]]:
    """The request fields of ``SERVED_SETTINGS``: GenerationConfig's with ``defaults`` and the
    given upper limits; ``resolution``, ``samplers`` and ``postprocessors`` are the types a
    resolution, a sampler name and a postprocessor name must have (``postprocessors`` None:
    none is installed, the list must be empty)."""
    most = MAX_POSTPROCESSORS if postprocessors is not None else 0
    return dict(
        resolution=(
            resolution,
            Field(defaults.resolution or "standard", description=GENERATION_FIELDS["resolution"].metadata["help"]),
        ),
        steps=setting_field("steps", min(defaults.steps, max_steps), le=max_steps),
        guidance=setting_field("guidance", min(defaults.guidance, max_guidance), le=max_guidance),
        time_shift=setting_field("time_shift", defaults.time_shift),
        grid_jitter=setting_field("grid_jitter", defaults.grid_jitter),
        early_stop=setting_field("early_stop", defaults.early_stop),
        sampler=(samplers, Field(defaults.sampler, description=GENERATION_FIELDS["sampler"].metadata["help"])),
        postprocess=(
            list[postprocessors or str],
            Field(
                list(defaults.postprocess),
                max_length=most,
                description=GENERATION_FIELDS["postprocess"].metadata["help"],
            ),
        ),
        adaptive=(
            Literal["off", "auto"] | SPEEDUP,
            Field(defaults.adaptive, description=GENERATION_FIELDS["adaptive"].metadata["help"]),
        ),
    )


GenerateRequest = create_model(
    "GenerateRequest", __base__=RequestBase, **served_settings(GenerationConfig(), str | int)
)


class JobCreated(BaseModel):
    id: str
    state: JobState
    events_url: str
    job_url: str


class JobInfo(BaseModel):
    """A job's state; ``images`` (URLs) and ``metadata`` once it is done, ``error`` if it failed."""

    id: str
    state: JobState
    request: GenerateRequest
    created: float
    finished: float | None = None
    images: list[str] = []
    metadata: dict[str, Any] = {}
    error: str | None = None


class ModelInfo(BaseModel):
    id: str
    source: str
    parameters: int
    sample_size: int
    size_multiple: int
    text_conditioned: bool
    resolutions: dict[str, int]
    profile: dict[str, Any]


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str


# what any /v1 route can answer besides its success (422 is FastAPI's own)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or wrong API key (when the server has one)"},
    404: {"model": Problem, "description": "no such job or image (unknown, or dropped)"},
}


def request_model(
    config: ServerConfig,
    defaults: GenerationConfig,
    sizes: dict[str, int],
    multiple: int,
    most_images: int,
    variants: tuple[str, ...] = ("default",),
) -> type[GenerateRequest]:
    """:class:`GenerateRequest` with this server's limits and the served model's ``defaults``
    in its fields (``sizes``: the named resolutions in pixels for the served model, whose sizes
    are multiples of ``multiple``), so that one object both states them in the OpenAPI schema
    and enforces them."""
    names = tuple(name for name, size in sizes.items() if size <= config.max_size)
    pixels = Annotated[int, Field(ge=multiple, le=config.max_size, multiple_of=multiple)]
    resolution = Literal[names] | pixels if names else pixels
    if defaults.resolution not in names and not isinstance(defaults.resolution, int):
        defaults = replace(defaults, resolution="standard" if "standard" in names else (names or (multiple,))[0])
    return create_model(
        "GenerateRequestWithinLimits",
        __base__=GenerateRequest,
        prompt=(
            str,
            Field(
                min_length=1, max_length=config.max_prompt_length, pattern=PROMPT_PATTERN, description="what to draw"
            ),
        ),
        num_images=(int, Field(1, ge=1, le=most_images)),
        model=(
            Literal[variants] | None,
            Field(None, description="the served variant to use; left out: the client's sticky share of the routes"),
        ),
        **served_settings(
            defaults,
            resolution,
            config.max_steps,
            config.max_guidance,
            samplers=Literal[tuple(registry().names("sampler"))],
            postprocessors=Literal[tuple(names)] if (names := registry().names("postprocess")) else None,
        ),
    )
