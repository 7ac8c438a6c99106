"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    """Queue length, job and first-preview latency histograms, jobs by final state, refusals,
    images generated and flagged (by flag), and whether the image health is in alert."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_length = Gauge("fractalflow_queue_length", "jobs queued or running", registry=self.registry)
        self.job_seconds = Histogram(
            "fractalflow_job_seconds", "submit to finished images", buckets=SECONDS_BUCKETS, registry=self.registry
        )
        self.first_preview_seconds = Histogram(
            "fractalflow_first_preview_seconds",
            "submit to the first preview event",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.jobs = Counter("fractalflow_jobs", "jobs by final state", ["state"], registry=self.registry)
        self.errors = Counter("fractalflow_errors", "jobs that failed", registry=self.registry)
        self.variant_jobs = Counter(
            "fractalflow_variant_jobs",
            "jobs by model variant (A/B) and final state",
            ["variant", "state"],
            registry=self.registry,
        )
        self.variant_job_seconds = Histogram(
            "fractalflow_variant_job_seconds",
            "submit to finished images, by model variant (A/B)",
            ["variant"],
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.variant_flagged_images = Counter(
            "fractalflow_variant_flagged_images",
            "images flagged by their health report, by model variant (A/B) and flag",
            ["variant", "flag"],
            registry=self.registry,
        )
        self.images = Counter("fractalflow_images", "images generated", registry=self.registry)
        self.flagged_images = Counter(
            "fractalflow_flagged_images", "images flagged by their health report", ["flag"], registry=self.registry
        )
        self.health_alert = Gauge(
            "fractalflow_health_alert", "1 while /v1/health reports an alert", registry=self.registry
        )
        self.refused = Counter(
            "fractalflow_refused_requests",
            "requests refused (queue full, bad input, no key)",
            ["status"],
            registry=self.registry,
        )
