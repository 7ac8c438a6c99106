"""``fractalflow health report``: one HTML page on a training run's health and the run history.

- **Training** (``--run``): the loss and learning-rate curves (from TensorBoard's event files,
  or ``scalars.jsonl`` where TensorBoard was absent) drawn as inline SVG, and every health
  event the trainer logged (``logs/health.jsonl``: skipped steps, rollbacks), counted and listed.
- **History**: the newest recorded runs, and the regression check of the newest run of each
  kind against the runs before it (:mod:`fractalflow.monitoring.selfopt`).

No plotting library is needed: the charts are a few SVG polylines.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

from fractalflow.monitoring.selfopt import KINDS, CheckSettings, RunHistory, check_regression

WIDTH, HEIGHT, PAD = 560, 180, 36


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` of a run's logs: TensorBoard event files or ``scalars.jsonl``."""
    logs = run / "logs"
    series: dict[str, list[tuple[int, float]]] = {}
    if (logs / "scalars.jsonl").is_file():
        for line in (logs / "scalars.jsonl").read_text().splitlines():
            entry = json.loads(line)
            if "value" in entry:
                series.setdefault(entry["tag"], []).append((entry["step"], entry["value"]))
    if any(logs.glob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(logs), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series[tag] = [(event.step, event.value) for event in events.Scalars(tag)]
    return {tag: sorted(points) for tag, points in series.items()}


def svg_chart(points: list[tuple[int, float]], title: str) -> str:
    """A line chart of ``(step, value)`` points with its range labelled."""
    if len(points) < 2:
        return f"<p>{html.escape(title)}: fewer than two points</p>"
    steps, values = [p[0] for p in points], [p[1] for p in points]
    low, high = min(values), max(values)
    span_x, span_y = (max(steps) - min(steps)) or 1, (high - low) or 1.0

    def xy(step: int, value: float) -> str:
        x = PAD + (step - min(steps)) / span_x * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (value - low) / span_y * (HEIGHT - 2 * PAD)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(s, v) for s, v in points)
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}"><rect width="100%" height="100%" fill="white" stroke="#ccc"/>'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{line}"/>'
        f'<text x="{PAD}" y="16" font-size="12">{html.escape(title)}</text>'
        f'<text x="4" y="{PAD}" font-size="10">{high:.4g}</text>'
        f'<text x="4" y="{HEIGHT - PAD}" font-size="10">{low:.4g}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="10">step {min(steps)}</text>'
        f'<text x="{WIDTH - PAD - 60}" y="{HEIGHT - 8}" font-size="10">step {max(steps)}</text>'
        "</svg></figure>"
    )


def table(header: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def training_section(run: Path) -> str:
    if not (run / "logs").is_dir():
        raise FileNotFoundError(f"{run} has no logs/ folder: is it a training run folder (--out of train)?")
    scalars = read_scalars(run)
    charts = "".join(svg_chart(scalars[tag], tag) for tag in ("train/loss", "train/lr") if tag in scalars)
    health_log = run / "logs" / "health.jsonl"
    events = [json.loads(line) for line in health_log.read_text().splitlines()] if health_log.is_file() else []
    counts = Counter(event["event"] for event in events)
    summary = ", ".join(f"{count} {kind}" for kind, count in counts.items()) or "none: every step was taken"
    rows = [[e["step"], e["event"], e.get("reason", ""), e.get("to_step", "")] for e in events[-50:]]
    listed = table(["step", "event", "reason", "rolled back to"], rows) if rows else ""
    return f"<h2>Training: {html.escape(str(run))}</h2>{charts}<p>Health events: {summary}.</p>{listed}"


def history_section(history: RunHistory, settings: CheckSettings) -> str:
    runs = history.runs(limit=20)
    if not runs:
        return f"<h2>Run history</h2><p>No runs recorded in {html.escape(str(history.path))}.</p>"
    rows = [[r.id, r.kind, r.name, r.git_commit, r.model[:10], len(r.samples)] for r in runs]
    parts = [f"<h2>Run history ({html.escape(str(history.path))})</h2>"]
    parts.append(table(["id", "kind", "name", "commit", "model", "sampled metrics"], rows))
    for kind in KINDS:
        newest = history.runs(kind, 1)
        if not newest:
            continue
        baseline = history.comparable(newest[0], settings.baseline_runs)
        findings = check_regression(newest[0], baseline, settings) if baseline else []
        verdict = "regression" if any(f.regressed for f in findings) else "no regression"
        checked = [
            [f.metric, f"{f.new_median:.4g}", f"{f.baseline_median:.4g}", f"{f.worse_by:+.1%}", f"{f.p_value:.2g}",
             f.verdict]
            for f in findings
        ]  # fmt: skip
        parts.append(
            f"<h3>Newest {kind} run ({newest[0].id}) against {len(baseline)} earlier: {verdict}</h3>"
            + (table(["metric", "new", "baseline", "worse by", "p", ""], checked) if checked else "")
        )
    return "".join(parts)


def health_report(run: Path | None, history: RunHistory, settings: CheckSettings | None = None) -> str:
    """The report as one HTML document."""
    body = (training_section(run) if run is not None else "") + history_section(history, settings or CheckSettings())
    style = "body{font-family:sans-serif;max-width:960px;margin:2em auto}td,th{padding:2px 8px;text-align:left}"
    head = f"<head><meta charset='utf-8'><title>fractalflow health</title><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body><h1>fractalflow health report</h1>{body}</body></html>\n"
