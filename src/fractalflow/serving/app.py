"""The FastAPI app: ``create_app(config, engine)``. Endpoints under ``/v1`` (see docs/events.md
for the event stream), ``/healthz``, ``/metrics`` (Prometheus), OpenAPI at ``/docs``, and the
web UI at ``/`` when its built folder is present."""

import math
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from fractalflow.flow.refine import NAMED_RESOLUTIONS, resolution_size
from fractalflow.inference import InferenceEngine
from fractalflow.monitoring.hallucination import HallucinationCheck
from fractalflow.serving.config import ServerConfig
from fractalflow.serving.jobs import JobManager
from fractalflow.serving.limits import BodyLimit
from fractalflow.serving.metrics import ServerMetrics
from fractalflow.serving.registry import ModelRegistry
from fractalflow.serving.routes import (
    BEARER,
    BROWSER_FILES,
    KEY_HEADER,
    Service,
    browser_api,
    images_api,
    jobs_api,
    model_api,
)
from fractalflow.serving.routing import DEFAULT_VARIANT, EngineRouter
from fractalflow.serving.schemas import request_model

PACKAGED_UI = Path(__file__).parent / "ui"


def json_safe(value: object) -> object:
    """``value`` with what JSON cannot carry (NaN, infinities, lone surrogates) spelled out, so
    that a 422 can echo any input a client sent."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def browser_model_folder(folder: str) -> Path | None:
    """The ONNX export folder of ``ServerConfig.browser_model`` ("" = none); a folder that lacks
    a file the browser needs is refused at start, in one line."""
    if not folder:
        return None
    missing = [name for name in BROWSER_FILES if not (Path(folder) / name).is_file()]
    if missing:
        raise ValueError(
            f"browser_model={folder!r} is not an ONNX export (missing {', '.join(missing)}); "
            "write one with: fractalflow export --format onnx --out FOLDER"
        )
    return Path(folder)


def make_router(config: ServerConfig, engine: InferenceEngine | None) -> EngineRouter:
    """One engine (``engine``, or one for ``config.model``), or, with ``config.routes``, an A/B
    router over the registered models, each engine with the server's health checks."""

    def prepared(new: InferenceEngine) -> InferenceEngine:
        if config.check_alignment and not new.pipeline.config.is_class_conditional:
            new.pipeline.hallucination_check = HallucinationCheck.shipped()
        return new

    if config.routes:
        return EngineRouter(
            registry=ModelRegistry(config.registry),
            routes=config.routes,
            make_engine=lambda folder: prepared(InferenceEngine(folder, profile=config.profile)),
            max_loaded=config.max_loaded_models,
        )
    default = engine or InferenceEngine(config.model or None, profile=config.profile, adapter=config.adapter or None)
    return EngineRouter(default=prepared(default))


def create_app(config: ServerConfig | None = None, engine: InferenceEngine | None = None) -> FastAPI:
    """The service for ``config`` (default ``ServerConfig()``), running its model on ``engine``
    (default: an InferenceEngine for ``config.model`` under ``config.profile``)."""
    config = config or ServerConfig()
    metrics = ServerMetrics()
    router = make_router(config, engine)
    engine = router.primary
    manager = JobManager(router, config, metrics)
    metrics.queue_length.set_function(manager.unfinished)  # read at each scrape
    metrics.health_alert.set_function(lambda: manager.health.summary()["status"] == "alert")
    model = engine.pipeline.config  # loads the model: the request's limits depend on it
    sizes = {name: resolution_size(name, model.sample_size, model.downsampling) for name in NAMED_RESOLUTIONS}
    variants = tuple(router.routes) or (DEFAULT_VARIANT,)
    most_images = min(config.max_images, engine.profile.max_batch)
    WithinLimits = request_model(config, engine.defaults, sizes, model.downsampling, most_images, variants)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await run_in_threadpool(lambda: engine.pipeline)  # load before taking requests, off the event loop
        yield
        await run_in_threadpool(manager.shutdown)

    app = FastAPI(
        docs_url=None,  # served below, behind the key unless config.open_docs_and_metrics
        redoc_url=None,
        openapi_url=None,
        title="fractalflow",
        summary="Text to image with a fractal transformer: jobs, live previews over server-sent events.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, on_refused=metrics.refused.labels("413").inc)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"], allow_headers=["*"]
        )

    keys = manager.keys

    def check_key(x_api_key: str | None, bearer: HTTPAuthorizationCredentials | None) -> None:
        if not keys.accepts(x_api_key, bearer.credentials if bearer else None):
            metrics.refused.labels("401").inc()
            raise HTTPException(401, detail="missing or wrong API key: send it as X-API-Key or Authorization: Bearer")

    async def require_key(
        x_api_key: Annotated[str | None, Security(KEY_HEADER)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> None:
        check_key(x_api_key, bearer)

    # the schema declares the key only where the server has one
    guarded = [Depends(require_key)] if config.api_key else []

    service = Service(config, metrics, router, manager, sizes, check_key)
    app.include_router(jobs_api(service, WithinLimits, guarded))
    app.include_router(images_api(service))
    app.include_router(model_api(service, guarded))
    app.include_router(browser_api(browser_model_folder(config.browser_model), guarded))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "unfinished_jobs": manager.unfinished(), "max_queue": config.max_queue}

    private = [] if config.open_docs_and_metrics else guarded

    @app.get("/openapi.json", include_in_schema=False, dependencies=private)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=private)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="fractalflow API")

    @app.get("/metrics", response_class=Response, dependencies=private)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    ui = Path(config.ui_folder) if config.ui_folder else PACKAGED_UI
    if (ui / "index.html").is_file():
        app.mount("/", StaticFiles(directory=ui, html=True), name="ui")
    else:

        @app.get("/", include_in_schema=False)
        async def no_ui() -> RedirectResponse:
            return RedirectResponse("/docs")

    @app.exception_handler(RequestValidationError)
    async def count_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.refused.labels("422").inc()
        return JSONResponse({"detail": json_safe(jsonable_encoder(error.errors()))}, status_code=422)

    return app


def serve(app: FastAPI, config: ServerConfig) -> None:
    """Run ``app`` with uvicorn until SIGINT or SIGTERM. Stopping starts the jobs' shutdown
    (``JobManager.begin_shutdown``) before uvicorn waits for connections to close, so the
    streams that follow jobs end with a final event rather than being cut."""
    manager: JobManager = app.state.manager

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if not self.should_exit:
                manager.begin_shutdown(grace_seconds=config.shutdown_seconds * 2 / 3)
            super().handle_exit(sig, frame)

    settings = uvicorn.Config(
        app, host=config.host, port=config.port, timeout_graceful_shutdown=int(config.shutdown_seconds)
    )
    Server(settings).run()
