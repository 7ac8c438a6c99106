"""Request and response bodies of the HTTP API (pydantic; they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

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
        0.0, ge=0.0, allow_inf_nan=False, description="end a scale once the image changes by less than this"
    )
    sampler: Literal["euler", "heun"] = "euler"

    model_config = {"extra": "forbid"}


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
