"""InferenceEngine: one model served under a profile (precision, int8, compile, threads),
loaded on first use, with dynamic batching of compatible requests."""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from fractalflow.events import ProgressEvent
from fractalflow.generation import GenerationConfig
from fractalflow.inference.profiles import InferenceProfile, get_profile
from fractalflow.pipeline import FractalFlowPipeline, GenerationResult, default_model_folder


@dataclass(frozen=True)
class GenerationRequest:
    """One caller's generation for the batcher: ``num_images`` images of ``prompt`` with
    seeds ``seed``, ``seed + 1``, ... sampled as ``config`` says (None: the engine's
    :attr:`~InferenceEngine.defaults`); ``callback`` gets this request's own progress events.
    Requests are batched only when their configs, ``adaptive`` included, are equal."""

    prompt: str
    seed: int = 0
    num_images: int = 1
    config: GenerationConfig | None = None
    callback: Callable[[ProgressEvent], None] | None = None

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


class GenerationCancelled(Exception):
    """A request was cancelled while its batch was running; its Future ends with this."""


def quantize_int8(model: nn.Module) -> nn.Module:
    """Linear layers -> dynamically quantized int8 ones (weights int8, activations quantized per batch)."""
    with warnings.catch_warnings():
        # torchao is not packaged here; torch.ao's dynamic quantization still works and warns
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


class InferenceEngine:
    """Serves one model under an :class:`InferenceProfile` (``auto`` by default).

    ``generate(...)`` runs a request now; ``submit(GenerationRequest)`` returns a Future
    and lets a worker thread batch requests with the same settings that arrive within the
    profile's ``batch_window_ms``, up to ``max_batch`` images. ``cancel(future)`` stops a
    request whether it waits or runs: a running one hears no more events and ends with
    :class:`GenerationCancelled`; its batch stops early once every request in it is cancelled.
    The model loads on first use, unless a loaded ``pipeline`` is given (the profile is then applied to it in place).
    Use as a context manager (or call ``close``) to stop the worker.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        profile: str | InferenceProfile = "auto",
        pipeline: FractalFlowPipeline | None = None,
        adapter: str | Path | None = None,
    ):
        self.profile = get_profile(profile)
        self.model_source = model or default_model_folder()
        self.adapter = adapter
        self._pipeline = pipeline
        if pipeline is not None:
            self.prepare(pipeline)
        self._load_lock = threading.Lock()
        self._requests: queue.Queue[tuple[GenerationRequest, Future] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.batches_run: list[int] = []  # images per batch the worker ran, for inspection
        self._cancelled: set[Future] = set()  # running requests whose callers gave up

    @property
    def pipeline(self) -> FractalFlowPipeline:
        with self._load_lock:
            if self._pipeline is None:
                self._pipeline = self._load()
            return self._pipeline

    def _load(self) -> FractalFlowPipeline:
        profile = self.profile
        if profile.threads:
            torch.set_num_threads(profile.threads)
        pipeline = FractalFlowPipeline.from_pretrained(self.model_source, device=profile.device)
        if self.adapter:  # before quantization and compilation, which the adapter layers must go through
            pipeline.load_adapter(self.adapter)
        self.prepare(pipeline)
        return pipeline

    def prepare(self, pipeline: FractalFlowPipeline) -> None:
        """Apply the profile's quantization, precision and compilation to a loaded pipeline."""
        profile = self.profile
        if profile.quantize == "int8":
            pipeline.model = quantize_int8(pipeline.model)
        if profile.dtype != "fp32":
            pipeline.autocast_dtype = profile.torch_dtype
        if profile.compile:
            pipeline.model = torch.compile(pipeline.model, dynamic=True)

    def check_batch(self, images: int) -> None:
        if images > self.profile.max_batch:
            raise ValueError(
                f"{images} images in one batch is over the limit of profile {self.profile.name!r}: "
                f"max_batch={self.profile.max_batch}"
            )

    @property
    def defaults(self) -> GenerationConfig:
        """How a request that names no setting is sampled: the model's generation config with
        the profile's step caching."""
        return replace(self.pipeline.generation_config, adaptive=self.profile.adaptive)

    def generate(self, prompt: str | list[str], num_images_per_prompt: int = 1, **settings) -> GenerationResult:
        """``FractalFlowPipeline.generate`` under this profile, within its batch limit; the
        GenerationConfig fields in ``settings`` go over :attr:`defaults`."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.check_batch(len(prompts) * num_images_per_prompt)
        settings.setdefault("config", self.defaults)
        return self.pipeline.generate(prompts, num_images_per_prompt=num_images_per_prompt, **settings)

    def submit(self, request: GenerationRequest) -> Future:
        """Queue ``request``; the Future resolves to its own :class:`GenerationResult`."""
        if not request.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if request.num_images < 1:
            raise ValueError(f"num_images={request.num_images} must be >= 1")
        if request.config is None:
            request = replace(request, config=self.defaults)
        self.check_batch(request.num_images)
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="fractalflow-batcher", daemon=True)
            self._worker.start()
        future: Future = Future()
        self._requests.put((request, future))
        return future

    def cancel(self, future: Future) -> bool:
        """Cancel a submitted request; False if it had already finished."""
        if future.cancel():
            return True
        if future.done():
            return False
        self._cancelled.add(future)
        return True

    def close(self) -> None:
        """Finish queued requests, then stop the worker."""
        if self._worker is not None:
            self._requests.put(None)
            self._worker.join()
            self._worker = None

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _work(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            waiting, stop = [first], False
            deadline = time.perf_counter() + self.profile.batch_window_ms / 1000
            while sum(r.num_images for r, _ in waiting) < self.profile.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._requests.get(timeout=remaining) if remaining > 0 else self._requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                waiting.append(item)
            for batch in self._batches(waiting):
                self._run(batch)
            if stop:
                return

    def _batches(self, waiting: list[tuple[GenerationRequest, Future]]) -> list[list[tuple[GenerationRequest, Future]]]:
        """Compatible requests together, in arrival order, each batch within ``max_batch`` images."""
        groups: dict[GenerationConfig, list[list[tuple[GenerationRequest, Future]]]] = {}
        for item in waiting:
            batches = groups.setdefault(item[0].config, [[]])
            if sum(r.num_images for r, _ in batches[-1]) + item[0].num_images > self.profile.max_batch:
                batches.append([])
            batches[-1].append(item)
        return [batch for batches in groups.values() for batch in batches]

    def _run(self, batch: list[tuple[GenerationRequest, Future]]) -> None:
        live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        rows, start = [], 0
        for request, _ in live:
            rows.append((start, start + request.num_images))
            start += request.num_images

        def split_event(event: ProgressEvent) -> None:
            if all(f in self._cancelled for _, f in live):
                raise GenerationCancelled("every request in the batch was cancelled")
            for (request, future), (begin, end) in zip(live, rows):
                if request.callback is not None and future not in self._cancelled:
                    request.callback(replace(event, preview=event.preview[begin:end]))

        first = live[0][0]
        try:
            result = self.pipeline.generate(
                [r.prompt for r, _ in live for _ in range(r.num_images)],
                seeds=[s for r, _ in live for s in r.seeds()],
                callback=split_event,
                config=first.config,
            )
        except Exception as error:  # every caller of the batch hears of it; the worker lives on
            for _, future in live:
                self._cancelled.discard(future)
                future.set_exception(error)
            return
        self.batches_run.append(start)
        for (request, future), (begin, end) in zip(live, rows):
            if future in self._cancelled:
                self._cancelled.discard(future)
                future.set_exception(GenerationCancelled("cancelled while running"))
                continue
            metadata = {
                **result.metadata,
                "prompts": [request.prompt],
                "seeds": request.seeds(),
                "health": result.metadata["health"][begin:end],
                "batch": start,
            }
            future.set_result(GenerationResult(result.images[begin:end], metadata))
