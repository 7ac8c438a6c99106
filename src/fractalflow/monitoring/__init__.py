"""Watching a model's health: training faults (``TrainingHealth``) and generated images (``image_health``)."""

from fractalflow.monitoring.health import HealthSettings, TrainingHealth, image_health

__all__ = ["HealthSettings", "TrainingHealth", "image_health"]
