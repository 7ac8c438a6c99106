"""Self-optimisation, part one: a history of every measured run, and a regression check.

**History.** ``fractalflow bench``, ``eval`` and ``train`` record each run in a SQLite file
(``$FRACTALFLOW_HISTORY``, else ``history.sqlite`` in the cache folder): when, what kind,
the git commit, the model's weight hash, the hardware, the settings, the metrics, and the
repeated measurements behind them (``samples``: timings of each repeat, FD of each bootstrap
resample). ``fractalflow history`` lists and compares runs.

**Regression check.** A run is compared with the earlier runs of the same kind, hardware and
settings (the *baseline*; the model may differ: that is what a check is for). For every
metric with samples in both, a one-sided test asks whether the new run is worse:

- repeated timings (seconds: lower is better; images/s: higher): the Mann-Whitney U rank
  test of the new repeats against the baseline's pooled repeats;
- bootstrap distributions (FD): the share of paired draws in which the new value is better
  than the baseline's, a bootstrap p-value;
- per-image values (``per_image:`` samples of an eval: each image's distance to the nearest
  real image, the cosine between it and its caption): image i of every run has the same
  caption and seed, so the new run's values pair with the baseline's per-image medians, and
  the Wilcoxon signed-rank test asks whether they moved the bad way. An FD of a few hundred
  images barely notices half the sampling steps; paired images do.

A metric *regresses* when the test's p-value is below ``alpha`` **and** the change of its
median is beyond ``min_change`` (relative) in the bad direction: statistics alone would flag
a 1 % slowdown measured often enough, and a shared machine's noise is several per cent.
Per-image values carry no machine noise (a clean repeat draws the same images), so their
threshold is the smaller ``min_paired_change``. A timing is *inconclusive*, never regressed,
when the baseline runs' own medians differ by more than ``max_baseline_drift``: the machine
changed speed while they ran (a shared machine does, for minutes at a time), and a new run
cannot be told apart from that.

**Paired timings** need no earlier run. ``fractalflow bench --reference FOLDER`` draws the
run's images alternately with a reference model's in one process, so whatever the machine
does, it does to both; the run then holds ``reference:<metric>`` beside ``<metric>``, and
the check judges the pairs with the signed-rank test at ``min_change`` (as asv compares two
commits in interleaved rounds). History runs of the metric are not consulted for it.
``fractalflow history check`` exits 1 when any metric regresses, printing the evidence.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu, wilcoxon

from fractalflow.config import JsonConfig, check_ranges
from fractalflow.files import cache_dir

KINDS = ("bench", "eval", "train")
HISTORY_ENV = "FRACTALFLOW_HISTORY"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    git_commit TEXT NOT NULL,
    model TEXT NOT NULL,
    hardware TEXT NOT NULL,
    settings_key TEXT NOT NULL,
    settings TEXT NOT NULL,
    metrics TEXT NOT NULL,
    samples TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS comparable ON runs (kind, hardware, settings_key, id);
"""
# the direction of each metric a check knows; others are listed but never judged
LOWER_IS_BETTER = ("seconds", "fd_", "peak_rss", "loss", "distance")
HIGHER_IS_BETTER = ("images_per_s", "precision", "recall", "top", "concept_retrieval", "cosine")
PER_IMAGE = "per_image:"  # samples with one value per image, paired across runs by caption and seed
REFERENCE = "reference:"  # a reference model's timings, drawn alternately with the run's own (bench --reference)


def default_history_path() -> Path:
    return Path(os.environ.get(HISTORY_ENV) or cache_dir() / "history.sqlite")


def git_commit(folder: Path | None = None) -> str:
    """The checked-out commit (with ``+dirty`` for uncommitted changes), or ``unknown``."""
    folder = folder or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def settings_key(settings: dict[str, Any]) -> str:
    """Runs with equal settings (as canonical JSON) share this key."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    """One measured run. ``samples`` maps a metric to its repeated or resampled values."""

    kind: str
    name: str
    settings: dict[str, Any]
    metrics: dict[str, float]
    samples: dict[str, list[float]] = field(default_factory=dict)
    model: str = ""
    hardware: str = ""
    git_commit: str = "unknown"
    created: float = 0.0
    id: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; allowed: {list(KINDS)}")
        bad = [k for k, v in self.metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        bad += [k for k, values in self.samples.items() if not all(isinstance(v, (int, float)) for v in values)]
        if bad:
            raise ValueError(f"metrics and samples must be numbers: {sorted(set(bad))}")


class RunHistory:
    """The SQLite history of measured runs at ``path`` (created on first use)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_history_path()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        connection.executescript(SCHEMA)
        return connection

    def record(self, run: RunRecord) -> RunRecord:
        """Store ``run`` (stamped with the time now unless it has one); returns it with its id."""
        created = run.created or time.time()
        row = (
            created,
            run.kind,
            run.name,
            run.git_commit,
            run.model,
            run.hardware,
            settings_key(run.settings),
            json.dumps(run.settings, sort_keys=True, default=str),
            json.dumps(run.metrics),
            json.dumps(run.samples),
        )
        with self._connect() as connection:
            cursor = connection.execute(
                "INSERT INTO runs (created, kind, name, git_commit, model, hardware, settings_key, settings, "
                "metrics, samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        return RunRecord(**{**run.__dict__, "created": created, "id": cursor.lastrowid})

    def runs(self, kind: str | None = None, limit: int = 50) -> list[RunRecord]:
        """The newest ``limit`` runs (of ``kind``), newest first."""
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        return self._select(f"{where} ORDER BY id DESC LIMIT ?", (*args, limit))

    def get(self, run_id: int) -> RunRecord:
        found = self._select("WHERE id = ?", (run_id,))
        if not found:
            raise ValueError(f"no run {run_id} in {self.path}")
        return found[0]

    def comparable(self, run: RunRecord, limit: int = 20) -> list[RunRecord]:
        """The newest ``limit`` runs before ``run`` of its kind, hardware and settings."""
        return self._select(
            "WHERE kind = ? AND hardware = ? AND settings_key = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (run.kind, run.hardware, settings_key(run.settings), run.id if run.id is not None else 2**63 - 1, limit),
        )

    def _select(self, clause: str, args: tuple) -> list[RunRecord]:
        if not self.path.is_file():
            return []
        columns = "id, created, kind, name, git_commit, model, hardware, settings, metrics, samples"
        with self._connect() as connection:
            rows = connection.execute(f"SELECT {columns} FROM runs {clause}", args).fetchall()
        return [
            RunRecord(
                id=row[0],
                created=row[1],
                kind=row[2],
                name=row[3],
                git_commit=row[4],
                model=row[5],
                hardware=row[6],
                settings=json.loads(row[7]),
                metrics=json.loads(row[8]),
                samples=json.loads(row[9]),
            )
            for row in rows
        ]


@dataclass(frozen=True)
class CheckSettings(JsonConfig):
    """When a metric counts as regressed (see the module docstring). ``resamples``: paired
    draws for the bootstrap test; ``baseline_runs``: how many earlier runs make the baseline."""

    alpha: float = 0.01
    min_change: float = 0.05
    min_paired_change: float = 0.02
    max_baseline_drift: float = 0.10
    resamples: int = 2000
    baseline_runs: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(
            "CheckSettings",
            [
                ("alpha", self.alpha, "in (0, 0.5)", 0 < self.alpha < 0.5),
                ("min_change", self.min_change, "in [0, 1)", 0 <= self.min_change < 1),
                ("min_paired_change", self.min_paired_change, "in [0, 1)", 0 <= self.min_paired_change < 1),
                ("max_baseline_drift", self.max_baseline_drift, "> 0", self.max_baseline_drift > 0),
                ("resamples", self.resamples, "from 100 to 100000", 100 <= self.resamples <= 100_000),
                ("baseline_runs", self.baseline_runs, ">= 1", self.baseline_runs >= 1),
            ],
        )


@dataclass(frozen=True)
class Finding:
    """The check of one metric: medians, relative change (positive: worse), p-value, verdict."""

    metric: str
    test: str
    new_median: float
    baseline_median: float
    worse_by: float
    p_value: float
    regressed: bool
    baseline_drift: float | None = None  # timings: spread of the baseline runs' medians, relative
    inconclusive: bool = False

    @property
    def verdict(self) -> str:
        return "REGRESSED" if self.regressed else ("UNSURE" if self.inconclusive else "ok")

    def describe(self) -> str:
        text = (
            f"{self.verdict:9s} {self.metric}: {self.new_median:.4g} against {self.baseline_median:.4g} "
            f"({self.worse_by:+.1%} worse), {self.test} p = {self.p_value:.2g}"
        )
        if self.inconclusive:
            text += f"; the baseline runs themselves differ by {self.baseline_drift:.0%}: the machine changed speed"
        return text


def direction(metric: str) -> int:
    """+1 when a larger value is worse, -1 when a smaller one is, 0 when unknown."""
    name = metric.lower()
    if any(part in name for part in HIGHER_IS_BETTER):
        return -1
    if any(part in name for part in LOWER_IS_BETTER):
        return 1
    return 0


def bootstrap_p_value(new: np.ndarray, baseline: np.ndarray, worse: int, settings: CheckSettings) -> float:
    """Share of paired draws (one from each distribution) in which the new value is not worse:
    small when the new distribution lies beyond the baseline's in the bad direction."""
    rng = np.random.default_rng(settings.seed)
    draws_new = rng.choice(new, settings.resamples)
    draws_base = rng.choice(baseline, settings.resamples)
    not_worse = worse * (draws_new - draws_base) <= 0
    return float((not_worse.sum() + 1) / (settings.resamples + 1))


def signed_rank_p_value(new: np.ndarray, baseline: np.ndarray, worse: int) -> float:
    """One-sided Wilcoxon signed-rank p-value that the paired ``new`` values moved the bad way
    (1 when no pair differs)."""
    differences = worse * (new - baseline)
    if not differences.any():
        return 1.0
    return float(wilcoxon(differences, alternative="greater").pvalue)


def check_metric(
    metric: str, new: Sequence[float], baseline: Sequence[float], test: str, settings: CheckSettings
) -> Finding:
    """One metric of a new run against the baseline's samples, by ``test``: "rank",
    "bootstrap", "signed-rank" (``baseline`` then holds the values paired with ``new``; the
    threshold is ``min_paired_change``) or "paired" (timings paired with a reference's drawn
    alternately: the signed-rank test at ``min_change``, the change being the pairs' median ratio)."""
    worse = direction(metric)
    new_values, base_values = np.asarray(new, dtype=float), np.asarray(baseline, dtype=float)
    new_median, base_median = float(np.median(new_values)), float(np.median(base_values))
    worse_by = worse * (new_median - base_median) / abs(base_median) if base_median else 0.0
    if test == "paired" and (base_values > 0).all():
        worse_by = worse * (float(np.median(new_values / base_values)) - 1)
    if test == "rank":
        alternative = "greater" if worse > 0 else "less"
        p_value = float(mannwhitneyu(new_values, base_values, alternative=alternative).pvalue)
    elif test in ("signed-rank", "paired"):
        p_value = signed_rank_p_value(new_values, base_values, worse)
    else:
        p_value = bootstrap_p_value(new_values, base_values, worse, settings)
    threshold = settings.min_paired_change if test == "signed-rank" else settings.min_change
    regressed = p_value < settings.alpha and worse_by > threshold
    return Finding(metric, test, new_median, base_median, worse_by, p_value, regressed)


def check_regression(run: RunRecord, baseline: list[RunRecord], settings: CheckSettings | None = None) -> list[Finding]:
    """Every judged metric of ``run`` that has samples in it and in the ``baseline`` runs, or
    a reference's paired samples in the run itself (``reference:<metric>``, judged on those
    pairs alone). Timings (metrics named ``seconds`` or ``images_per_s``) use the rank test on repeats;
    per-image values (``per_image:``) the signed-rank test against the baseline runs'
    per-image medians (runs of another image count are left out); other sampled metrics
    (bootstrap resamples, e.g. FD) the bootstrap test."""
    settings = settings or CheckSettings()
    findings = []
    for metric, values in sorted(run.samples.items()):
        if not direction(metric) or len(values) < 2 or metric.startswith(REFERENCE):
            continue
        reference = run.samples.get(REFERENCE + metric, ())
        if len(reference) == len(values):
            findings.append(check_metric(metric, values, reference, "paired", settings))
            continue
        if metric.startswith(PER_IMAGE):
            paired = [
                earlier.samples[metric] for earlier in baseline if len(earlier.samples.get(metric, ())) == len(values)
            ]
            if paired:
                findings.append(check_metric(metric, values, np.median(paired, axis=0), "signed-rank", settings))
            continue
        pooled = [v for earlier in baseline for v in earlier.samples.get(metric, [])]
        if len(pooled) < 2:
            continue
        if "seconds" in metric or "images_per_s" in metric:
            findings.append(check_timing(metric, values, baseline, pooled, settings))
        else:
            findings.append(check_metric(metric, values, pooled, "bootstrap", settings))
    return findings


def check_timing(
    metric: str, values: list[float], baseline: list[RunRecord], pooled: list[float], settings: CheckSettings
) -> Finding:
    """The rank test of a timing, inconclusive when the baseline runs drift among themselves."""
    finding = check_metric(metric, values, pooled, "rank", settings)
    medians = [float(np.median(run.samples[metric])) for run in baseline if run.samples.get(metric)]
    drift = (max(medians) - min(medians)) / min(medians) if min(medians) > 0 else 0.0
    if drift <= settings.max_baseline_drift:
        return replace(finding, baseline_drift=drift)
    return replace(finding, baseline_drift=drift, regressed=False, inconclusive=True)


def eval_samples(report: dict) -> dict[str, list[float]]:
    """The samples a check tests from an ``evaluate`` report: the FD's bootstrap resamples and
    the per-image values (``per_image:<name>``)."""
    samples = {"fd_effnet_l0": report["fd_resampled"]} if report.get("fd_resampled") else {}
    samples.update({PER_IMAGE + name: values for name, values in report.get("per_image", {}).items()})
    return samples


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The entries of ``values`` that are numbers (booleans and text left out)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def record_run(
    kind: str,
    name: str,
    settings: dict[str, Any],
    metrics: dict[str, Any],
    samples: dict[str, list[float]] | None = None,
    model: str = "",
    hardware: str = "",
    path: str | Path | None = None,
) -> RunRecord:
    """Store one run in the history at ``path`` (default: :func:`default_history_path`), with
    the checked-out commit; non-numeric metrics are left out."""
    run = RunRecord(kind, name, settings, numeric(metrics), samples or {}, model, hardware, git_commit())
    return RunHistory(path).record(run)


def bench_records(report: dict) -> list[dict[str, Any]]:
    """``record_run`` arguments for each row of a ``fractalflow bench`` report: one run per
    profile and resolution, its settings without the model (a check compares models)."""
    records = []
    for row in report["rows"]:
        case = {k: v for k, v in row["case"].items() if k != "model"}
        evaluation = row.get("eval", {})
        samples = dict(row.get("samples", {}))
        if evaluation.get("fd_resampled"):
            samples["fd_effnet_l0"] = evaluation["fd_resampled"]
        metrics = {k: v for k, v in row.items() if k not in ("case", "profile", "eval", "samples")}
        records.append(
            dict(
                kind="bench",
                name=f"{case['profile']}/{case['resolution']}",
                settings={"case": case, "profile": row["profile"]},
                metrics={**metrics, **numeric(evaluation)},
                samples=samples,
                model=row.get("model_sha256", ""),
                hardware=report.get("hardware", ""),
            )
        )
    return records


def format_runs(runs: list[RunRecord], metrics: Sequence[str] = ()) -> str:
    """A table of runs: id, time, kind, name, commit, model hash, and chosen or headline metrics."""
    lines = [f"{'id':>5} {'when':16s} {'kind':5s} {'name':24s} {'commit':17s} {'model':10s} metrics"]
    for run in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created))
        shown = metrics or [m for m in run.metrics if direction(m)][:4]
        values = ", ".join(f"{m}={run.metrics[m]:.4g}" for m in shown if m in run.metrics)
        lines.append(
            f"{run.id:>5} {when:16s} {run.kind:5s} {run.name[:24]:24s} {run.git_commit[:17]:17s} "
            f"{run.model[:10]:10s} {values}"
        )
    return "\n".join(lines)
