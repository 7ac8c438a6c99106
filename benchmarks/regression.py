"""Does ``fractalflow history check`` catch real regressions and stay quiet otherwise?

On this machine, with the shipped model and the ``cpu`` profile, in one process:

- **speed**: 5 clean bench runs, then one whose generation is made 20 % slower: after each
  call, a fifth of its time more of busy matrix products on the same threads, as slower code
  would keep the cores busy (a sleep lets them idle, and an idle core's clock may boost for
  the next image). Each run times ``--repeats`` images alternately with the clean pipeline as
  its reference (``fractalflow bench --reference``: A B, B A, ...), and is judged on those
  pairs alone: a shared machine's speed wanders by more than 20 % between runs minutes
  apart, but hardly between two images in a row;
- **quality**: 6 clean evals (``--n`` held-out captions, 20 steps), then two whose sampler
  silently runs half, and a quarter of, the steps while the recorded settings still say 20;
  each is judged on its FD (bootstrap) and on its per-image values, paired by seed;

every run recorded in a fresh history; each eval from the sixth on is checked against the
five before it with the default ``CheckSettings``. Writes
``results/regression-check.json`` (every run's measurements included) and prints a table.

    python benchmarks/regression.py            # ~16 min on the 2-core CPU
    python benchmarks/regression.py --parts speed --out benchmarks/results/regression-speed.json
    python benchmarks/regression.py --recheck benchmarks/results/regression-check.json   # judge again
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.evaluate import EvalSettings, evaluate, model_fingerprint
from fractalflow.files import atomic_write_text
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device
from fractalflow.inference import InferenceEngine
from fractalflow.inference.bench import interleaved_latency
from fractalflow.monitoring.selfopt import (
    REFERENCE,
    CheckSettings,
    RunHistory,
    RunRecord,
    check_regression,
    eval_samples,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CLEAN_RUNS = 6  # evals: the first five are the baseline of the sixth and of the injected runs
CLEAN_PAIRED_RUNS = 5  # bench runs, each judged on its own pairs
SLOWDOWN = 0.2


class Injected:
    """The pipeline with a fault injected into ``generate``; everything else passes through."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __getattr__(self, name):
        return getattr(self.pipeline, name)


class Slowed(Injected):
    """Every generate call made ``SLOWDOWN`` slower by busy work, as slower code would be."""

    def generate(self, *args, **kwargs):
        begin = time.perf_counter()
        result = self.pipeline.generate(*args, **kwargs)
        busy_until = begin + (1 + SLOWDOWN) * (time.perf_counter() - begin)
        work = torch.ones(128, 128)
        while time.perf_counter() < busy_until:
            work = torch.tanh(work @ work * 0.01)
        return result


class FewerSteps(Injected):
    """The pipeline sampling a ``1 / divisor`` of the steps it is asked for: a silent quality regression."""

    def __init__(self, pipeline, divisor: int):
        super().__init__(pipeline)
        self.divisor = divisor

    def generate(self, *args, config: GenerationConfig, **kwargs):
        return self.pipeline.generate(*args, config=config.merged(steps=max(1, config.steps // self.divisor)), **kwargs)


RECORD_FIELDS = ("kind", "name", "settings", "metrics", "samples", "model", "hardware")


def checked(history: RunHistory, case: str, run: RunRecord, settings: CheckSettings) -> dict:
    """Record ``run`` (a ``case`` of the script) and check it against the runs before it, or
    on its own pairs when it has a reference's."""
    recorded = history.record(run)
    baseline = history.comparable(recorded, settings.baseline_runs)
    paired = any(name.startswith(REFERENCE) for name in run.samples)
    judged = paired or len(baseline) == settings.baseline_runs
    findings = check_regression(recorded, [] if paired else baseline, settings) if judged else []
    return {
        "kind": run.kind,
        "case": case,
        "run": recorded.id,
        "baseline": [b.id for b in baseline],
        "findings": [{**f.__dict__, "verdict": f.verdict} for f in findings],
        "regressed": any(f.regressed for f in findings),
        "record": {name: getattr(run, name) for name in RECORD_FIELDS},
    }


def measure_speed(args: argparse.Namespace, history: RunHistory, settings: CheckSettings) -> list[dict]:
    """The clean and slowed bench runs, each timed alternately with the clean pipeline."""
    engine = InferenceEngine(profile="cpu")
    pipeline, hardware = engine.pipeline, describe_device("cpu")
    model = model_fingerprint(pipeline.model)
    config = pipeline.generation_config.merged(resolution="standard", early_stop=0.02, adaptive=engine.profile.adaptive)
    bench_settings = {"config": config.describe(), "repeats": args.repeats, "profile": engine.profile.to_dict()}
    rows = []
    for label, subject in [*[("clean", pipeline)] * CLEAN_PAIRED_RUNS, ("20 % slower", Slowed(pipeline))]:
        finished, reference = interleaved_latency(subject, pipeline, config, args.repeats)
        samples = {"seconds_to_image": finished, REFERENCE + "seconds_to_image": reference}
        run = RunRecord("bench", "cpu/standard", bench_settings, {}, samples, model, hardware)
        rows.append(checked(history, label, run, settings))
        print(label, rows[-1]["regressed"], [f["worse_by"] for f in rows[-1]["findings"]], flush=True)
    return rows


def measure_quality(args: argparse.Namespace, history: RunHistory, settings: CheckSettings) -> list[dict]:
    """The clean and injected evals, each checked against the five before it."""
    pipeline = InferenceEngine(profile="cpu").pipeline
    model, hardware = model_fingerprint(pipeline.model), describe_device("cpu")
    rows = []
    held_out = load_emoji(args.data, image_size=64, split="eval")
    alignment = load_alignment_encoder()
    eval_settings = EvalSettings(num_images=args.n, batch_size=32, generation=GenerationConfig())
    injected = [("half the steps", FewerSteps(pipeline, 2)), ("a quarter of the steps", FewerSteps(pipeline, 4))]
    for label, subject in [*[("clean", pipeline)] * CLEAN_RUNS, *injected]:
        report = evaluate(subject, held_out, eval_settings, alignment, progress=False)
        run = RunRecord(
            "eval", "default", eval_settings.to_dict(), report["metrics"], eval_samples(report), model, hardware
        )
        rows.append(checked(history, label, run, settings))
        print(label, report["metrics"]["fd_effnet_l0"], rows[-1]["regressed"], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="image pairs timed per bench run (default: 20)")
    parser.add_argument("--parts", default="speed,quality", help="comma-separated: speed, quality (default: both)")
    parser.add_argument("--out", default=str(RESULTS / "regression-check.json"), help="results JSON to write")
    parser.add_argument("--n", type=int, default=500, help="held-out captions per eval (default: 500)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument(
        "--recheck",
        default=None,
        help="a results JSON of this script: judge its recorded runs again with today's check, measuring nothing",
    )
    args = parser.parse_args()
    settings = CheckSettings()
    history = RunHistory(Path(tempfile.mkdtemp()) / "history.sqlite")
    if args.recheck:
        earlier = json.loads(Path(args.recheck).read_text())
        args.repeats, args.n = earlier["repeats"], earlier["n"]
        rows = [checked(history, row["case"], RunRecord(**row["record"]), settings) for row in earlier["rows"]]
    else:
        parts = {"speed": measure_speed, "quality": measure_quality}
        chosen = [part for part in args.parts.split(",") if part]
        if not chosen or set(chosen) - set(parts):
            parser.error(f"--parts {args.parts!r}: choose from {list(parts)}")
        rows = [row for part in chosen for row in parts[part](args, history, settings)]

    print(f"\n{'kind':5s} {'case':22s} {'run':>3s} {'metric':34s} {'worse by':>9s} {'p':>8s} verdict")
    for row in rows:
        for finding in row["findings"] or [None]:
            metric = finding["metric"] if finding else ""
            worse = f"{finding['worse_by']:+9.1%}" if finding else f"{'':9s}"
            p_value = f"{finding['p_value']:8.2g}" if finding else f"{'':8s}"
            verdict = finding["verdict"] if finding else "(baseline)"
            print(f"{row['kind']:5s} {row['case']:22s} {row['run']:>3d} {metric:34s} {worse} {p_value} {verdict}")
    out = Path(args.out)
    hardware = rows[0]["record"]["hardware"]
    payload = {"hardware": hardware, "check_settings": settings.to_dict(), "repeats": args.repeats, "n": args.n}
    atomic_write_text(out, json.dumps({**payload, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
