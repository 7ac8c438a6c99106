"""The ``/v1`` routes of the service: jobs (generate, follow, cancel), images, and the served
model with its health. Each function builds one router over a :class:`Service`."""

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.concurrency import run_in_threadpool

from fractalflow.pipeline import public_name
from fractalflow.serving.config import ServerConfig
from fractalflow.serving.jobs import Job, JobManager, QueueFull
from fractalflow.serving.metrics import ServerMetrics
from fractalflow.serving.routing import EngineRouter
from fractalflow.serving.schemas import ERROR_RESPONSES, JobCreated, JobInfo, ModelInfo, Problem

EVENT_STREAM = "text/event-stream"
# the two ways a request may carry the API key (both documented in the OpenAPI schema)
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)
# OpenAPI links: where a queued job's id leads (clients and stateful schemathesis follow them)
JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in [("GetJob", "getJob"), ("FollowJobEvents", "followJobEvents"), ("CancelJob", "cancelJob")]
}


@dataclass
class Service:
    """What the routes share: the settings, the metrics, the router of engines, the jobs, the
    named resolutions of the served model, and ``check_key`` (raises 401 for a wrong key)."""

    config: ServerConfig
    metrics: ServerMetrics
    router: EngineRouter
    manager: JobManager
    sizes: dict[str, int]
    check_key: Callable


def sse(event: dict) -> str:
    return f"id: {event['id']}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"


def jobs_api(service: Service, request_type: type, dependencies: list) -> APIRouter:
    """POST /v1/generate, GET /v1/jobs/{id}, its events, DELETE /v1/jobs/{id}."""
    api = APIRouter(prefix="/v1", dependencies=dependencies, responses=ERROR_RESPONSES)
    manager, metrics = service.manager, service.metrics
    WithinLimits = request_type

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

    return api


def images_api(service: Service) -> APIRouter:
    """GET /v1/images/{id}.png: with a key, by the key or a signed URL."""
    images = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
    manager, config, keys = service.manager, service.config, service.manager.keys

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
            service.check_key(await KEY_HEADER(request), await BEARER(request))
        data = manager.images.get(image_id)
        if data is None:
            raise HTTPException(
                404,
                detail=f"no image {image_id!r} (unknown, or dropped: the server keeps the last {config.stored_images})",
            )
        return Response(data, media_type="image/png")

    return images


def model_api(service: Service, dependencies: list) -> APIRouter:
    """GET /v1/models and GET /v1/health."""
    api = APIRouter(prefix="/v1", dependencies=dependencies, responses=ERROR_RESPONSES)
    manager, config, sizes = service.manager, service.config, service.sizes
    engine = service.router.primary

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

    return api


# what an ONNX export folder holds that a browser needs, and nothing else of it
BROWSER_FILES = {
    "onnx_export.json": "application/json",
    "generation_config.json": "application/json",
    "tokenizer.json": "application/json",
    "transformer.onnx": "application/octet-stream",
    "text_encoder.onnx": "application/octet-stream",
}


def browser_api(folder: Path | None, dependencies: list) -> APIRouter:
    """GET /v1/browser/{name}: the files of the ONNX export the web UI runs on the user's device."""
    api = APIRouter(prefix="/v1", dependencies=dependencies, responses=ERROR_RESPONSES)

    @api.get("/browser/{name}", operation_id="getBrowserModelFile", response_class=FileResponse)
    async def browser_file(name: str) -> FileResponse:
        """A file of the in-browser model (ServerConfig.browser_model): its settings, tokenizer and ONNX graphs."""
        if folder is None:
            raise HTTPException(404, detail="this server offers no in-browser model (ServerConfig.browser_model)")
        if name not in BROWSER_FILES:
            raise HTTPException(404, detail=f"no browser file {name!r}; allowed: {', '.join(BROWSER_FILES)}")
        return FileResponse(folder / name, media_type=BROWSER_FILES[name])

    return api
