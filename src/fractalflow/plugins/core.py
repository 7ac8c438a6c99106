"""PluginRegistry: every sampler, guidance rule, prompt preprocessor, image postprocessor,
event sink and loss, by kind and name.

Plugins come from two places only: **installed entry points** in the group
``fractalflow.plugins`` (each names a :class:`Plugin` or a list of them) and explicit
:meth:`PluginRegistry.register` calls. Nothing is imported from a path or a URL, and entry
points are loaded on first use of the registry, not when fractalflow is imported. The
built-in samplers are registered the same way, as the distribution ``fractalflow``.

A name registered twice for one kind is an error naming both distributions (no silent
override). A plugin that raises fails the call that used it with a :class:`PluginError`
naming the plugin; the process, and a server's worker, go on.

What each kind is called with (its Protocol below):

- ``sampler``: ``step(velocity, x, t, t_next) -> (x_next, x0_estimate)``;
- ``postprocess``: ``(images (B, C, H, W) in [-1, 1]) -> images`` of the same shape;
- ``prompt``: ``(prompt) -> prompt``;
- ``guidance``: ``(v_cond, v_uncond, scale, t) -> velocity``;
- ``event_sink``: ``(ProgressEvent) -> None``;
- ``loss``: ``(predicted, target, t) -> scalar``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from torch import Tensor

ENTRY_POINT_GROUP = "fractalflow.plugins"
KINDS = ("sampler", "guidance", "prompt", "postprocess", "event_sink", "loss")
BUILT_IN = "fractalflow"


class SamplerStep(Protocol):
    def __call__(self, velocity: Callable, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]: ...


class Postprocessor(Protocol):
    def __call__(self, images: Tensor) -> Tensor: ...


class PromptPreprocessor(Protocol):
    def __call__(self, prompt: str) -> str: ...


class Guidance(Protocol):
    def __call__(self, v_cond: Tensor, v_uncond: Tensor, scale: float, t: Tensor) -> Tensor: ...


class EventSink(Protocol):
    def __call__(self, event: Any) -> None: ...


class Loss(Protocol):
    def __call__(self, predicted: Tensor, target: Tensor, t: Tensor) -> Tensor: ...


class PluginError(ValueError):
    """A plugin could not be registered or found, or it failed while running."""


@dataclass(frozen=True)
class Plugin:
    """One plugin: its ``kind`` (one of KINDS), ``name``, ``version``, the callable that does
    the work, and the ``distribution`` it came from (filled in from its entry point)."""

    kind: str
    name: str
    version: str
    function: Callable
    description: str = ""
    distribution: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PluginError(f"plugin {self.name!r}: kind {self.kind!r} is not one of {list(KINDS)}")
        if not self.name or not self.name.replace("-", "_").replace(".", "_").isidentifier():
            raise PluginError(f"plugin name {self.name!r}: use letters, digits, '_', '-' or '.'")
        if not callable(self.function):
            raise PluginError(f"{self.kind} plugin {self.name!r}: function is not callable")

    def __call__(self, *args, **kwargs):
        """Run the plugin; whatever it raises becomes a PluginError that names it."""
        try:
            return self.function(*args, **kwargs)
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(
                f"{self.kind} plugin {self.name!r} {self.version} ({self.distribution}) failed: "
                f"{type(error).__name__}: {error}"
            ) from error


class PluginRegistry:
    """Plugins by (kind, name). ``load_entry_points`` adds the installed ones; where one
    cannot be loaded its error is kept in ``load_errors`` (and listed), the rest still load."""

    def __init__(self) -> None:
        self._plugins: dict[tuple[str, str], Plugin] = {}
        self.load_errors: list[str] = []

    def register(self, plugin: Plugin, distribution: str | None = None) -> Plugin:
        """Add ``plugin`` (as coming from ``distribution``, default its own or "explicit")."""
        if not isinstance(plugin, Plugin):
            raise PluginError(f"{plugin!r} is not a fractalflow.plugins.Plugin")
        source = distribution or plugin.distribution or "explicit register()"
        plugin = Plugin(**{**plugin.__dict__, "distribution": source})
        key = (plugin.kind, plugin.name)
        if key in self._plugins:
            other = self._plugins[key]
            raise PluginError(
                f"{plugin.kind} plugin {plugin.name!r} is registered twice: by {other.distribution} "
                f"({other.version}) and by {plugin.distribution} ({plugin.version}); uninstall one"
            )
        self._plugins[key] = plugin
        return plugin

    def get(self, kind: str, name: str) -> Plugin:
        if (kind, name) not in self._plugins:
            raise PluginError(f"unknown {kind} {name!r}; choose one of {self.names(kind)} (fractalflow plugins list)")
        return self._plugins[(kind, name)]

    def names(self, kind: str) -> list[str]:
        return sorted(name for plugin_kind, name in self._plugins if plugin_kind == kind)

    def plugins(self) -> list[Plugin]:
        return [self._plugins[key] for key in sorted(self._plugins)]

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register every plugin that installed distributions declare in ``group``."""
        for point in entry_points(group=group):
            distribution = point.dist.name if point.dist is not None else point.value
            try:
                loaded = point.load()
                for plugin in loaded if isinstance(loaded, (list, tuple)) else [loaded]:
                    self.register(plugin, distribution)
            except Exception as error:  # a broken plugin package must not take the others down
                self.load_errors.append(f"entry point {point.name!r} of {distribution}: {error}")


def postprocess(images: Tensor, names: tuple[str, ...]) -> Tensor:
    """``images`` (B, C, H, W) in [-1, 1] through the postprocess plugins ``names`` in order;
    a plugin that returns another shape fails with a PluginError."""
    for name in names:
        plugin = registry().get("postprocess", name)
        result = plugin(images)
        if not isinstance(result, Tensor) or result.shape != images.shape:
            got = tuple(result.shape) if isinstance(result, Tensor) else type(result).__name__
            raise PluginError(f"postprocess plugin {name!r} returned {got}, not images of shape {tuple(images.shape)}")
        images = result.clamp(-1, 1)
    return images


_REGISTRY: PluginRegistry | None = None
_LOCK = threading.Lock()


def built_in_plugins() -> list[Plugin]:
    from fractalflow.flow.samplers import AdamsBashforth2, euler_step, heun_step

    return [
        Plugin("sampler", "euler", "1", euler_step, "first-order Euler, one evaluation per step"),
        Plugin("sampler", "heun", "1", heun_step, "second-order Heun, two evaluations per step"),
        Plugin("sampler", "ab2", "1", AdamsBashforth2, "second-order Adams-Bashforth, one evaluation per step"),
    ]


def registry() -> PluginRegistry:
    """The process's registry: the built-ins and the installed entry points, loaded on first use."""
    global _REGISTRY
    with _LOCK:
        if _REGISTRY is None:
            found = PluginRegistry()
            for plugin in built_in_plugins():
                found.register(plugin, BUILT_IN)
            found.load_entry_points()
            _REGISTRY = found
        return _REGISTRY
