"""Plugins: samplers, guidance, prompt preprocessors, image postprocessors, event sinks and
losses, found by name in one registry (:mod:`fractalflow.plugins.core`)."""

from fractalflow.plugins.core import (
    ENTRY_POINT_GROUP,
    KINDS,
    Plugin,
    PluginError,
    PluginRegistry,
    registry,
)

__all__ = ["ENTRY_POINT_GROUP", "KINDS", "Plugin", "PluginError", "PluginRegistry", "registry"]
