"""EngineRouter: which model serves a job, for A/B tests across registered model versions.

Without routes the server has one engine, and every job is variant ``default``. With a
model registry and ``routes`` (variant -> weight; a variant is an alias such as
``production`` or a version ``name:N``) each job is served by:

- the variant the request names in ``model``, if it names one of the routes;
- else a weighted choice that is **sticky per client**: the client id (``X-Client-Id``) is
  hashed to a number in [0, 1) that falls into one variant's share, so a client keeps
  seeing the same variant while the weights stay; without an id the choice is random.

A variant is resolved to its version on every job, so moving an alias (``fractalflow
models promote``) takes effect with the next job, without a restart. Engines are loaded on
first use, one per version, and at most ``max_loaded`` are kept: the least recently used
one beyond that is closed once its queued jobs are done.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from fractalflow.inference import InferenceEngine
from fractalflow.serving.registry import ModelRegistry

DEFAULT_VARIANT = "default"


def bucket(client_id: str) -> float:
    """A number in [0, 1) fixed by the client id."""
    return int(hashlib.sha256(client_id.encode()).hexdigest()[:12], 16) / 16**12


class EngineRouter:
    """Routes jobs to engines (see the module docstring). ``make_engine(folder)`` builds an
    engine for a registered model folder."""

    def __init__(
        self,
        default: InferenceEngine | None = None,
        registry: ModelRegistry | None = None,
        routes: dict[str, float] | None = None,
        make_engine: Callable[[Path], InferenceEngine] | None = None,
        max_loaded: int = 2,
    ):
        routes = dict(routes or {})
        if routes and registry is None:
            raise ValueError("routes need a model registry")
        if any(not weight > 0 for weight in routes.values()):
            raise ValueError(f"route weights must be > 0, got {routes}")
        if default is None and not routes:
            raise ValueError("give an engine or routes over a registry")
        for variant in routes:
            registry.get(variant)  # every route must resolve now, not at the first job
        total = sum(routes.values())
        self.routes = {variant: weight / total for variant, weight in routes.items()}
        self.registry, self.make_engine, self.max_loaded = registry, make_engine, max_loaded
        self._default = default
        self._engines: OrderedDict[str, InferenceEngine] = OrderedDict()
        self._lock = threading.Lock()

    def choose(self, asked: str | None = None, client_id: str | None = None) -> str:
        """The variant of a job: the one asked for, else the client's sticky weighted share."""
        if not self.routes:
            if asked not in (None, "", DEFAULT_VARIANT):
                raise ValueError(f"model={asked!r}: this server serves one model; leave model out")
            return DEFAULT_VARIANT
        if asked:
            if asked not in self.routes:
                raise ValueError(f"model={asked!r}: not served; choose one of {sorted(self.routes)}")
            return asked
        point = bucket(client_id) if client_id else random.random()
        for variant, share in self.routes.items():
            point -= share
            if point < 0:
                return variant
        return next(reversed(self.routes))

    def engine(self, variant: str) -> tuple[str, InferenceEngine]:
        """(the version now behind ``variant``, its engine), loading it if needed."""
        if variant == DEFAULT_VARIANT and not self.routes:
            return "", self._default
        version = self.registry.get(variant)
        with self._lock:
            if version.ref not in self._engines:
                self._engines[version.ref] = self.make_engine(self.registry.root / version.folder)
                while len(self._engines) > self.max_loaded:
                    _, old = self._engines.popitem(last=False)
                    threading.Thread(target=old.close, name="fractalflow-unload", daemon=True).start()
            self._engines.move_to_end(version.ref)
            return version.ref, self._engines[version.ref]

    @property
    def primary(self) -> InferenceEngine:
        """The engine whose model sets the request schema: the default, or the first route's."""
        return self._default if not self.routes else self.engine(next(iter(self.routes)))[1]

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._engines)

    def engines(self) -> list[InferenceEngine]:
        with self._lock:
            return ([self._default] if self._default is not None else []) + list(self._engines.values())
