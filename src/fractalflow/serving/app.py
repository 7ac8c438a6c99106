"""The FastAPI app: ``create_app(config, engine)``. Endpoints under ``/v1`` (see docs/events.md
for the event stream), ``/healthz``, ``/metrics`` (Prometheus), OpenAPI at ``/docs``, and the
web UI at ``/`` when its built folder is present."""

import asyncio
import json
import math
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request, Response, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from fractalflow.flow.refine import NAMED_RESOLUTIONS, resolution_size
from fractalflow.inference import InferenceEngine
from fractalflow.monitoring.hallucination import HallucinationCheck
from fractalflow.pipeline import public_name
from fractalflow.serving.config import ServerConfig
from fractalflow.serving.jobs import Job, JobManager, QueueFull
from fractalflow.serving.limits import BodyLimit
from fractalflow.serving.metrics import ServerMetrics
from fractalflow.serving.registry import ModelRegistry
from fractalflow.serving.routing import DEFAULT_VARIANT, EngineRouter
from fractalflow.serving.schemas import ERROR_RESPONSES, JobCreated, JobInfo, ModelInfo, Problem, request_model

PACKAGED_UI = Path(__file__).parent / "ui"
EVENT_STREAM = "text/event-stream"
# the two ways a request may carry the API key (both documented in the OpenAPI schema)
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)


# OpenAPI links: where a queued job's id leads (clients and stateful schemathesis follow them)
JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in [("GetJob", "getJob"), ("FollowJobEvents", "followJobEvents"), ("CancelJob", "cancelJob")]
}


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


def sse(event: dict) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"


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
    api = APIRouter(prefix="/v1", dependencies=guarded, responses=ERROR_RESPONSES)

    def find(job_id: str) -> Job:
        job = manager.get(job_id)
        if job is None:
            raise HTTPException(404, detail=f"no job {job_id!r} (unknown, or finished long enough ago to be dropped)")
        return job

    @api.post(
        "/generate",
        status_code=202,
        response_model=JobCreated,
        operation_id="generate",
        responses={
            202: {"links": JOB_LINKS},
            400: {"model": Problem, "description": "the body is not JSON text"},
            413: {"model": Problem, "description": "the body is over the server's max_body_bytes"},
            429: {"model": Problem, "description": "the queue is full: retry after Retry-After seconds"},
        },
    )
    async def generate(
        request: WithinLimits,
        x_client_id: Annotated[str | None, Header(max_length=128, description="sticky A/B variant per client")] = None,
    ) -> JobCreated:
        """Queue a generation; follow it at ``events_url`` (server-sent events) or ``job_url``."""
        try:
            job = await run_in_threadpool(manager.submit, request, asyncio.get_running_loop(), x_client_id)
        except QueueFull as full:
            metrics.refused.labels("429").inc()
            raise HTTPException(429, detail=str(full), headers={"Retry-After": str(full.retry_after)}) from None
        except ValueError as error:  # a variant the router cannot serve
            metrics.refused.labels("422").inc()
            raise HTTPException(422, detail=str(error)) from None
        return JobCreated(
            id=job.id, state=job.state, events_url=f"/v1/jobs/{job.id}/events", job_url=f"/v1/jobs/{job.id}"
        )

    @api.get("/jobs/{job_id}", response_model=JobInfo, operation_id="getJob")
    async def job_info(job_id: str) -> JobInfo:
        return find(job_id).info()

    @api.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        operation_id="followJobEvents",
        responses={200: {"description": "the job's events (docs/events.md)", "content": {EVENT_STREAM: {}}}},
    )
    async def job_events(
        job_id: str, last_event_id: int = Header(-1, ge=-1, description="resume after this event (-1: from the start)")
    ) -> StreamingResponse:
        """Server-sent events of the job from the start (or after ``Last-Event-ID``) to its end."""
        job = find(job_id)
        start = last_event_id + 1

        async def stream():
            async for event in job.stream(start):
                yield sse(event)

        return StreamingResponse(
            stream(), media_type=EVENT_STREAM, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @api.delete(
        "/jobs/{job_id}",
        response_model=JobInfo,
        operation_id="cancelJob",
        responses={409: {"model": Problem, "description": "the job had already finished"}},
    )
    async def cancel_job(job_id: str) -> JobInfo:
        """Cancel a queued or running job (a finished one is returned unchanged, with 409)."""
        job = find(job_id)
        if not manager.cancel(job):
            raise HTTPException(409, detail=f"job {job_id} has already finished ({job.state})")
        return job.info()

    images = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)

    @images.get("/images/{image_id}.png", response_class=Response)
    async def image(
        image_id: str,
        request: Request,
        expires: int | None = Query(None, description="with signature: when the signed URL stops working"),
        signature: str | None = Query(None, description="from the job's image URL, when the server has a key"),
    ) -> Response:
        """A finished image. With an API key set, the URLs in a job's results carry a signature
        (not the key) that lets an ``<img>`` fetch them until they expire; else send the key."""
        if keys.key and not keys.signed(image_id, expires, signature):
            check_key(await KEY_HEADER(request), await BEARER(request))
        data = manager.images.get(image_id)
        if data is None:
            raise HTTPException(
                404,
                detail=f"no image {image_id!r} (unknown, or dropped: the server keeps the last {config.stored_images})",
            )
        return Response(data, media_type="image/png")

    @api.get("/models", response_model=list[ModelInfo])
    async def models() -> list[ModelInfo]:
        pipeline = await run_in_threadpool(lambda: engine.pipeline)
        model = pipeline.config
        return [
            ModelInfo(
                id=public_name(config.model) if config.model else "default",
                source=pipeline.source,
                parameters=sum(p.numel() for p in pipeline.model.parameters()),
                sample_size=model.sample_size,
                size_multiple=model.downsampling,
                text_conditioned=not model.class_names,
                resolutions=sizes,
                profile=engine.profile.to_dict(),
            )
        ]

    @api.get("/health", operation_id="getHealth")
    async def health() -> dict:
        """The health of the last images generated: the share with each flag (non-finite, blank,
        overshooting, probable hallucination, prompt drifted from the training captions), the
        alert limits, and the alerts that hold now."""
        check, drift = engine.pipeline.hallucination_check, engine.pipeline.prompt_drift
        return {
            **manager.health.summary(),
            "hallucination_check": None if check is None else check.threshold.to_dict(),
            "prompt_drift_threshold": None if drift is None else drift.threshold,
        }

    app.include_router(api)
    app.include_router(images)

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
