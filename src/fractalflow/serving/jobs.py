"""Jobs: one generation request each, fed to the InferenceEngine's batcher, with the events
that its subscribers stream. Engine callbacks arrive on the worker thread; subscribers wait
on the server's event loop."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from PIL import Image, PngImagePlugin

from fractalflow.events import ProgressEvent
from fractalflow.inference import GenerationCancelled, GenerationRequest, InferenceEngine
from fractalflow.monitoring.health import IMAGE_FLAGS, ImageHealthWindow
from fractalflow.pipeline import GenerationResult
from fractalflow.serving.auth import ApiKeys
from fractalflow.serving.config import ServerConfig
from fractalflow.serving.metrics import ServerMetrics
from fractalflow.serving.routing import EngineRouter
from fractalflow.serving.schemas import GenerateRequest, JobInfo

TERMINAL = ("done", "error", "cancelled")


class QueueFull(Exception):
    """The server holds ``max_queue`` unfinished jobs; ``retry_after`` is a guess in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the job queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


def png_bytes(image: Image.Image, metadata: dict[str, Any] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text("fractalflow", json.dumps(metadata))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def preview_data_url(event: ProgressEvent) -> str:
    """The event's images side by side as a ``data:image/png;base64`` URL."""
    images = event.preview_images()
    row = GenerationResult(images).grid(columns=len(images))
    return "data:image/png;base64," + base64.b64encode(png_bytes(row)).decode()


class Job:
    """One request's life: its state, its events (numbered from 0), and its results."""

    def __init__(self, request: GenerateRequest, seed: int, loop: asyncio.AbstractEventLoop):
        self.id = uuid.uuid4().hex[:16]
        self.request = request.model_copy(update={"seed": seed})
        self.state = "queued"
        self.created = time.time()
        self.finished: float | None = None
        self.first_preview: float | None = None
        self.images: list[str] = []
        self.metadata: dict[str, Any] = {}
        self.error: str | None = None
        self.future: Future | None = None
        self.engine: InferenceEngine | None = None  # the engine of its variant, set when submitted
        self.variant, self.model_version = "default", ""
        self.events: list[dict[str, Any]] = []
        self.stage: str | None = None
        self._preview_index: int | None = None
        self._lock = threading.Lock()
        self._loop = loop
        self._waiter = asyncio.Event()

    @property
    def is_finished(self) -> bool:
        return self.state in TERMINAL

    def mark_running(self) -> None:
        """Queued -> running (a job already finished, e.g. cancelled, stays as it is)."""
        with self._lock:
            if self.state == "queued":
                self.state = "running"

    def finish(self, state: str) -> bool:
        """Move to a final ``state``; False if another thread finished the job first."""
        with self._lock:
            if self.state in TERMINAL:
                return False
            self.state, self.finished = state, time.time()
            return True

    def publish(self, kind: str, **data: Any) -> None:
        """Record an event (from any thread) and wake the subscribers.

        Only the newest ``step`` event keeps its preview (a PNG data URL): an older one, and the
        last once the job has finished, is kept with ``preview: null``, so a job holds one
        preview at most however many steps it runs."""
        with self._lock:
            if self.events and self.events[-1]["type"] in TERMINAL:
                return  # a step that raced a cancel: nothing follows a final event
            if self._preview_index is not None and (kind == "step" or kind in TERMINAL):
                # a copy: a subscriber may still be sending the event it was given
                self.events[self._preview_index] = {**self.events[self._preview_index], "preview": None}
                self._preview_index = None
            self.events.append({"id": len(self.events), "type": kind, "job": self.id, **data})
            if kind == "step":
                self._preview_index = len(self.events) - 1
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, asyncio.Event()
        waiter.set()

    async def stream(self, start: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Events from number ``start`` on, as they come, until the job's final one."""
        index = start
        while True:
            waiter = self._waiter
            with self._lock:
                new = self.events[index:]
            for event in new:
                index += 1
                yield event
                if event["type"] in TERMINAL:
                    return
            if not new:
                if self.is_finished and index >= len(self.events):
                    return
                await waiter.wait()

    def info(self) -> JobInfo:
        return JobInfo(
            id=self.id,
            state=self.state,
            request=self.request,
            created=self.created,
            finished=self.finished,
            images=self.images,
            metadata=self.metadata,
            error=self.error,
        )


class JobManager:
    """Admits jobs up to ``max_queue`` unfinished ones, submits them to the engine, turns its
    progress into events, and keeps the last ``stored_images`` images (and their jobs)."""

    def __init__(self, router: EngineRouter, config: ServerConfig, metrics: ServerMetrics):
        self.router = router
        self.config = config
        self.metrics = metrics
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.images: OrderedDict[str, bytes] = OrderedDict()
        self.keys = ApiKeys(config.api_key, config.image_url_seconds)
        self._lock = threading.Lock()
        self._mean_job_seconds = 1.0
        limits = dict.fromkeys(("non_finite", "blank", "out_of_range"), config.alert_flagged_share)
        limits["probable_hallucination"] = config.alert_hallucination_share
        limits["prompt_drifted"] = config.alert_drift_share
        self.health = ImageHealthWindow(config.health_window, limits)

    def unfinished(self) -> int:
        with self._lock:
            return sum(not job.is_finished for job in self.jobs.values())

    def submit(self, request: GenerateRequest, loop: asyncio.AbstractEventLoop, client_id: str | None = None) -> Job:
        """Queue ``request`` on the engine of its variant (chosen by the router: the model it
        names, else the client's sticky share of the routes); raises QueueFull, or ValueError
        for a model the server does not serve."""
        variant = self.router.choose(request.model, client_id)
        version, engine = self.router.engine(variant)
        waiting = self.unfinished()
        if waiting >= self.config.max_queue:
            per_batch = max(1, self.router.primary.profile.max_batch)
            raise QueueFull(max(1, round(self._mean_job_seconds * waiting / per_batch)))
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        job = Job(request, seed, loop)
        job.engine, job.variant, job.model_version = engine, variant, version
        with self._lock:
            self.jobs[job.id] = job
        job.publish("queued", position=waiting)
        job.future = engine.submit(
            GenerationRequest(
                request.prompt,
                seed=seed,
                num_images=request.num_images,
                config=request.generation_config(engine.defaults),
                callback=lambda event: self._on_progress(job, event),
            )
        )
        job.future.add_done_callback(lambda future: self._on_done(job, future))
        return job

    def _on_progress(self, job: Job, event: ProgressEvent) -> None:
        job.mark_running()
        if job.first_preview is None:
            job.first_preview = time.time()
            self.metrics.first_preview_seconds.observe(job.first_preview - job.created)
        if event.stage != job.stage:
            job.stage = event.stage
            job.publish("stage", stage=event.stage, step=event.step, total=event.total)
        job.publish(
            "step",
            stage=event.stage,
            step=event.step,
            total=event.total,
            elapsed=round(event.elapsed, 4),
            blocks_run=event.blocks_run,
            preview=preview_data_url(event),
        )

    def _on_done(self, job: Job, future: Future) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or isinstance(error, GenerationCancelled):
            self._mark_cancelled(job)
            return
        if error is not None:
            job.error = str(error)
            if not job.finish("error"):
                return
            self.metrics.errors.inc()
            job.publish("error", message=job.error)
        else:
            result: GenerationResult = future.result()
            metadata = {**result.metadata, "job": job.id, "variant": job.variant, "model_version": job.model_version}
            images = [self._store(image, metadata) for image in result.images]
            if not job.finish("done"):  # cancelled while its batch was finishing: results dropped
                return
            job.images, job.metadata = images, metadata
            self._count_health(metadata.get("health", []), job.variant)
            seconds = job.finished - job.created
            self.metrics.variant_job_seconds.labels(job.variant).observe(seconds)
            self._mean_job_seconds = 0.8 * self._mean_job_seconds + 0.2 * seconds
            self.metrics.job_seconds.observe(seconds)
            job.publish("done", images=job.images, metadata=metadata)
        self._count_finished(job)

    def _count_health(self, reports: list[dict], variant: str) -> None:
        self.health.add(reports)
        self.metrics.images.inc(len(reports))
        for flag in IMAGE_FLAGS:
            count = sum(ImageHealthWindow.flagged(report, flag) for report in reports)
            if count:
                self.metrics.flagged_images.labels(flag).inc(count)
                self.metrics.variant_flagged_images.labels(variant, flag).inc(count)

    def _mark_cancelled(self, job: Job) -> None:
        if job.finish("cancelled"):
            job.images, job.metadata = [], {}
            job.publish("cancelled")
            self._count_finished(job)

    def _count_finished(self, job: Job) -> None:
        self.metrics.jobs.labels(job.state).inc()
        self.metrics.variant_jobs.labels(job.variant, job.state).inc()
        self._forget_old_jobs()

    def _store(self, image: Image.Image, metadata: dict[str, Any]) -> str:
        image_id = uuid.uuid4().hex[:16]
        with self._lock:
            self.images[image_id] = png_bytes(image, metadata)
            while len(self.images) > self.config.stored_images:
                self.images.popitem(last=False)
        return self.keys.image_url(image_id)

    def _forget_old_jobs(self) -> None:
        with self._lock:
            finished = [job_id for job_id, job in self.jobs.items() if job.is_finished]
            for job_id in finished[: max(0, len(finished) - self.config.stored_images)]:
                del self.jobs[job_id]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def cancel(self, job: Job) -> bool:
        """Cancel a queued or running job at once (a running one's batch drops its images);
        False if it had already finished."""
        if job.is_finished or job.future is None or not job.engine.cancel(job.future):
            return False
        self._mark_cancelled(job)
        return True

    def begin_shutdown(self, grace_seconds: float) -> threading.Timer:
        """The server is stopping: cancel the queued jobs now and the running ones once
        ``grace_seconds`` have passed, so that every followed stream gets its final event
        before the server stops waiting for connections to close."""
        self.cancel_unfinished(queued_only=True)
        timer = threading.Timer(grace_seconds, self.cancel_unfinished)
        timer.daemon = True
        timer.start()
        return timer

    def cancel_unfinished(self, queued_only: bool = False) -> None:
        with self._lock:
            jobs = [job for job in self.jobs.values() if not job.is_finished]
        for job in jobs:
            if job.state == "queued" or not queued_only:
                self.cancel(job)

    def shutdown(self) -> None:
        """Cancel the jobs still waiting, let the running batch finish, stop the engine's worker."""
        with self._lock:
            waiting = [job for job in self.jobs.values() if job.state == "queued" and job.future is not None]
        for job in waiting:
            job.future.cancel()
        for engine in self.router.engines():
            engine.close()
