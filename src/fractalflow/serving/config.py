"""ServerConfig: what ``fractalflow serve`` listens on, serves, and allows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fractalflow.config import MAX_GUIDANCE, MAX_SIDE, MAX_STEPS, JsonConfig
from fractalflow.inference.profiles import PROFILES


@dataclass(frozen=True)
class ServerConfig(JsonConfig):
    """Settings of the service, saved as JSON (``fractalflow serve --config server.json``).

    ``model``: a model folder or hub id ("" = the shipped default), with the LoRA ``adapter``
    folder applied if one is given; ``profile``: an inference
    profile name (``auto``, ``gpu``, ``cpu``, ``edge``). ``max_queue``: jobs waiting or running
    before new ones get 429. The ``max_*`` limits are enforced per request with a 422 that
    names the allowed range. ``api_key``: when set, every ``/v1`` call needs it in the
    ``X-API-Key`` or ``Authorization: Bearer`` header (never in a URL), and so do ``/docs``,
    ``/openapi.json`` and ``/metrics`` unless ``open_docs_and_metrics``; image URLs in job
    results are signed for ``image_url_seconds`` instead, so an ``<img>`` can show them.
    ``cors_origins``: origins a browser app may call from. ``shutdown_seconds``: on SIGTERM,
    queued jobs are cancelled at once, running ones after two thirds of this, and the server
    stops waiting for connections after all of it, so every followed stream gets a final event.
    ``stored_images``: finished images kept in memory for ``/v1/images`` (oldest dropped).
    ``max_body_bytes``: larger request bodies get 413 before they are read into memory.
    ``registry`` and ``routes`` (variant -> weight, e.g. ``{"production": 9, "canary": 1}``)
    serve several registered models as an A/B test, sticky per ``X-Client-Id``; at most
    ``max_loaded_models`` are kept loaded (``serving/routing.py``).
    ``browser_model``: an ONNX export folder (``fractalflow export``) that the web UI runs on the
    user's device (onnxruntime-web), served at ``/v1/browser/{file}`` ("" = none).
    ``check_alignment``: score every image against its prompt with the shipped alignment
    encoder and flag probable hallucinations (where a threshold was calibrated). ``/v1/health``
    summarises the last ``health_window`` images and alerts when the share of technically
    flagged images (non-finite, blank, overshooting) passes ``alert_flagged_share`` or that of
    probable hallucinations passes ``alert_hallucination_share``, or that of prompts far from the
    training captions (where the model carries a prompt reference) ``alert_drift_share``.

    Memory the jobs hold is bounded by these: at most ``max_queue`` unfinished jobs and
    ``stored_images`` finished ones are kept; each keeps its events (about 200 bytes each, at
    most ``max_steps`` step events per scale) and one preview PNG (at most 64 px a side, the
    newest step's; none once finished); ``stored_images`` PNGs of at most ``max_size`` px.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = ""
    adapter: str = ""
    profile: str = "auto"
    max_queue: int = 32
    max_size: int = 256
    max_steps: int = 100
    max_images: int = 4
    max_prompt_length: int = 300
    max_guidance: float = 20.0
    api_key: str = ""
    cors_origins: tuple[str, ...] = ()
    stored_images: int = 512
    image_url_seconds: int = 3600
    open_docs_and_metrics: bool = False
    shutdown_seconds: float = 30.0
    max_body_bytes: int = 65536
    ui_folder: str = ""
    check_alignment: bool = True
    health_window: int = 200
    alert_flagged_share: float = 0.05
    alert_hallucination_share: float = 0.5
    alert_drift_share: float = 0.25
    registry: str = ""
    routes: dict = dataclasses.field(default_factory=dict)
    max_loaded_models: int = 2
    browser_model: str = ""

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "max_queue",
            "max_size",
            "max_steps",
            "max_images",
            "max_prompt_length",
            "stored_images",
            "image_url_seconds",
            "max_body_bytes",
            "health_window",
            "max_loaded_models",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_size > MAX_SIDE or self.max_steps > MAX_STEPS:
            problems.append(
                f"max_size ({self.max_size}) must be <= {MAX_SIDE}, max_steps ({self.max_steps}) <= {MAX_STEPS}"
            )
        if self.profile not in ("auto", *PROFILES):
            problems.append(f"profile={self.profile!r}; allowed: {['auto', *PROFILES]}")
        if not 0 < self.port < 65536:
            problems.append(f"port={self.port} must be in 1..65535")
        if not 1 <= self.max_guidance <= MAX_GUIDANCE:
            problems.append(f"max_guidance={self.max_guidance} must be from 1 to {MAX_GUIDANCE}")
        for name in ("alert_flagged_share", "alert_hallucination_share", "alert_drift_share"):
            if not 0 <= getattr(self, name) <= 1:  # also refuses NaN
                problems.append(f"{name}={getattr(self, name)} must be from 0 to 1")
        if not 1 <= self.shutdown_seconds <= 600:  # also refuses NaN
            problems.append(f"shutdown_seconds={self.shutdown_seconds} must be from 1 to 600")
        if self.routes and not self.registry:
            problems.append("routes need a registry folder (registry)")
        if any(not isinstance(w, (int, float)) or isinstance(w, bool) or not w > 0 for w in self.routes.values()):
            problems.append(f"routes={self.routes}: each variant needs a weight > 0")
        if problems:
            raise ValueError("invalid ServerConfig: " + "; ".join(problems))
