"""Watching a model's health: training faults (``health.TrainingHealth``)."""

from fractalflow.monitoring.health import HealthSettings, TrainingHealth

__all__ = ["HealthSettings", "TrainingHealth"]
