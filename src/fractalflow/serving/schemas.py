"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from fractalflow.model.adaptive import MAX_SPEEDUP
from fractalflow.serving.config import ServerConfig

JobState = Literal["queued", "running", "done", "error", "cancelled"]


class GenerateRequest(BaseModel):
    """One generation job: ``num_images`` images of ``prompt``, image i with seed ``seed + i``."""

    prompt: str = Field(min_length=1, description="what to draw")
    resolution: str | int = Field(
        "standard", description="preview, standard, high, ultra, or a size in pixels (a multiple of the model's)"
    )
    steps: int = Field(20, ge=1, description="steps of a full noise-to-image trajectory")
    guidance: float = Field(3.0, ge=1.0, allow_inf_nan=False, description="classifier-free guidance scale (1 = none)")
    seed: int | None = Field(None, ge=0, lt=2**31, description="random when left out; returned in metadata")
    num_images: int = Field(1, ge=1)
    early_stop: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="end a scale once the image changes by less than this"
    )
    sampler: Literal["euler", "heun"] = "euler"
    adaptive: Literal["off", "auto"] | Annotated[float, Field(ge=1.0, le=MAX_SPEEDUP, allow_inf_nan=False)] | None = (
        Field(
            None,
            description="spend less compute on steps that need less: off, auto (the model's calibrated default) or "
            "a target speed-up (the largest calibrated one not above it); left out: the server profile's setting",
        )
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
    config: ServerConfig, sizes: dict[str, int], multiple: int, most_images: int
) -> type[GenerateRequest]:
    """:class:`GenerateRequest` with this server's limits in its fields (``sizes``: the named
    resolutions in pixels for the served model, whose sizes are multiples of ``multiple``), so
    that one object both states them in the OpenAPI schema and enforces them."""
    names = tuple(name for name, size in sizes.items() if size <= config.max_size)
    pixels = Annotated[int, Field(ge=multiple, le=config.max_size, multiple_of=multiple)]
    resolution = Literal[names] | pixels if names else pixels
    return create_model(
        "GenerateRequestWithinLimits",
        __base__=GenerateRequest,
        prompt=(
            str,
            Field(min_length=1, max_length=config.max_prompt_length, pattern=r"\S", description="what to draw"),
        ),
        resolution=(
            resolution,
            Field(
                "standard" if "standard" in names else (names or (multiple,))[0],
                description=f"{', '.join(names)}, or a size in pixels (a multiple of {multiple})",
            ),
        ),
        steps=(
            int,
            Field(min(20, config.max_steps), ge=1, le=config.max_steps, description="steps of a full trajectory"),
        ),
        guidance=(
            float,
            Field(min(3.0, config.max_guidance), ge=1.0, le=config.max_guidance, allow_inf_nan=False),
        ),
        num_images=(int, Field(1, ge=1, le=most_images)),
    )
