"""``fractalflow bench``: speed, memory and quality of each inference profile at each
resolution, against the plain fp32 single-scale pipeline measured in the same run.

Each (profile, resolution) runs in its own process so its peak RSS is its own. A run
measures, one image at a time, the seconds to the first preview event and to the finished
image (median of 3 after a warm-up), images per second at batch 1 and at the best batch
the profile allows, peak RSS, and FD-EffNetL0 / alignment of ``n`` held-out captions.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fractalflow.config import JsonConfig
from fractalflow.evaluation.evaluate import model_fingerprint
from fractalflow.flow.refine import resolution_size
from fractalflow.generation import GenerationConfig
from fractalflow.inference.engine import InferenceEngine
from fractalflow.inference.profiles import PROFILES, InferenceProfile, get_profile
from fractalflow.pipeline import FractalFlowPipeline, default_model_folder

BASELINE = "baseline"
REFERENCE = "reference:"  # samples paired one to one with the same-named samples of the measured model
TEXT_PROMPT = "red heart"


@dataclass(frozen=True)
class BenchCase(JsonConfig):
    """One measurement: a profile (or ``baseline``: the fp32 pipeline at one scale) at a resolution."""

    profile: str = BASELINE
    resolution: str = "standard"
    model: str = ""
    steps: int = 20
    early_stop: float = 0.0
    eval_images: int = 0
    data: str = "data/emoji"
    repeats: int = 3
    reference: str = ""

    def __post_init__(self) -> None:
        if not (self.steps >= 1 and self.eval_images >= 0 and self.repeats >= 1 and 0 <= self.early_stop < math.inf):
            raise ValueError(
                f"invalid BenchCase: steps ({self.steps}) and repeats ({self.repeats}) must be >= 1, eval_images "
                f"({self.eval_images}) >= 0 and early_stop ({self.early_stop}) a finite number >= 0"
            )


def generation_config(case: BenchCase, pipeline: FractalFlowPipeline, profile: InferenceProfile) -> GenerationConfig:
    """The model's own sampling defaults (guidance, its interval, the time grid) with the
    case's steps: the baseline samples the named resolution's size at one scale in full;
    profiles refine coarse to fine, with their early stop and step caching (``adaptive``)."""
    defaults = pipeline.generation_config
    if case.profile == BASELINE:
        model = pipeline.config
        size = resolution_size(case.resolution, model.sample_size, model.downsampling)
        return defaults.merged(size=size, steps=case.steps, early_stop=0.0, adaptive="off", postprocess=())
    return defaults.merged(
        resolution=case.resolution, steps=case.steps, early_stop=case.early_stop, adaptive=profile.adaptive
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_prompt(pipeline: FractalFlowPipeline) -> str:
    """What the timings draw: a fixed text prompt, or a class model's first class."""
    names = pipeline.config.class_names
    return names[0] if names else TEXT_PROMPT


def time_one(pipeline: FractalFlowPipeline, config: GenerationConfig, seed: int) -> tuple[float, float]:
    """Seconds to the first preview event and to the finished image of one image."""
    stamps: list[float] = []
    begin = time.perf_counter()
    pipeline.generate(
        bench_prompt(pipeline),
        seed=seed,
        callback=lambda _, seen=stamps: seen.append(time.perf_counter()),
        config=config,
    )
    return stamps[0] - begin, time.perf_counter() - begin


def latency_samples(
    pipeline: FractalFlowPipeline, config: GenerationConfig, repeats: int = 3
) -> tuple[list[float], list[float]]:
    """Seconds to the first preview event and to the finished image of each of ``repeats``
    images drawn one at a time, after one warm-up run (which also compiles, where the profile
    compiles)."""
    timings = [time_one(pipeline, config, seed) for seed in range(repeats + 1)][1:]
    return [first for first, _ in timings], [finished for _, finished in timings]


def interleaved(
    first: Callable[[int], float], second: Callable[[int], float], repeats: int
) -> tuple[list[float], list[float]]:
    """Seconds that ``first(i)`` and ``second(i)`` report, ``repeats`` pairs drawn alternately
    in one process (ABBA order: A B, B A, A B, ... after a warm-up pair, i = 0, that is
    dropped), so a machine that changes speed slows both alike and pair i is comparable."""
    a, b = [], []
    for i in range(repeats + 1):
        order = [(a, first), (b, second)] if i % 2 == 0 else [(b, second), (a, first)]
        for seconds, run in order:
            seconds.append(run(i))
    return a[1:], b[1:]


def interleaved_latency(
    pipeline: FractalFlowPipeline, reference: FractalFlowPipeline, config: GenerationConfig, repeats: int = 10
) -> tuple[list[float], list[float]]:
    """Seconds to the finished image of ``pipeline`` and of ``reference`` (seed i for pair i),
    drawn :func:`interleaved`."""
    return interleaved(
        lambda seed: time_one(pipeline, config, seed)[1], lambda seed: time_one(reference, config, seed)[1], repeats
    )


def latency(pipeline: FractalFlowPipeline, config: GenerationConfig, repeats: int = 3) -> tuple[float, float]:
    """Median seconds to the first preview and to the finished image (see :func:`latency_samples`)."""
    first_preview, finished = latency_samples(pipeline, config, repeats)
    return statistics.median(first_preview), statistics.median(finished)


def load_case(model: str, profile_name: str) -> tuple[InferenceProfile, FractalFlowPipeline]:
    """The profile and pipeline a case measures ``model`` with ("": the shipped model)."""
    if profile_name == BASELINE:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        pipeline = FractalFlowPipeline.from_pretrained(model or default_model_folder(), device=device)
        return InferenceProfile(name=BASELINE, device=device), pipeline
    engine = InferenceEngine(model or None, profile=profile_name)
    return engine.profile, engine.pipeline


def measure(case: BenchCase) -> dict:
    """Run one case in this process (call it in a fresh one for a clean peak RSS). With a
    ``reference`` model, the seconds to the image are measured alternately with it (see
    :func:`interleaved_latency`) and recorded as pairs, ``reference:seconds_to_image``
    beside ``seconds_to_image``; the peak RSS then holds both models."""
    started = time.perf_counter()
    profile, pipeline = load_case(case.model, case.profile)
    prompt = bench_prompt(pipeline)
    if not pipeline.config.class_names:
        pipeline.text_encoder.encode([prompt])
    load_seconds = time.perf_counter() - started
    config = generation_config(case, pipeline, profile)

    first_previews, finishes = latency_samples(pipeline, config, case.repeats)
    samples = {"seconds_to_first_preview": first_previews, "seconds_to_image": finishes}
    paired = {}
    if case.reference:
        _, reference = load_case(case.reference, case.profile)
        finishes, reference_finishes = interleaved_latency(pipeline, reference, config, case.repeats)
        samples.update({"seconds_to_image": finishes, REFERENCE + "seconds_to_image": reference_finishes})
        paired = {
            "reference_seconds_to_image": statistics.median(reference_finishes),
            "time_vs_reference": statistics.median(new / old for new, old in zip(finishes, reference_finishes)),
        }
    throughput = {}
    for batch in sorted({1, 2, 4, profile.max_batch}):
        if batch > profile.max_batch:
            continue
        begin = time.perf_counter()
        pipeline.generate([prompt] * batch, seed=0, config=config)
        throughput[batch] = batch / (time.perf_counter() - begin)
    report = {
        "case": case.to_dict(),
        "profile": profile.to_dict(),
        "size": pipeline.generate(prompt, seed=0, config=config, steps=1).metadata["size"],
        "config": config.describe(),
        "load_seconds": load_seconds,
        "seconds_to_first_preview": statistics.median(first_previews),
        "seconds_to_image": statistics.median(finishes),
        "samples": samples,
        **paired,
        "model_sha256": model_fingerprint(pipeline.model),
        "images_per_s_batch1": throughput[1],
        "images_per_s_best": max(throughput.values()),
        "best_batch": max(throughput, key=throughput.get),
        "peak_rss_mb": peak_rss_mb(),
    }
    if torch.cuda.is_available():
        report["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 1024**2
    if case.eval_images:
        report["eval"] = evaluate_case(case, pipeline, config)
    return report


def evaluate_case(case: BenchCase, pipeline: FractalFlowPipeline, config: GenerationConfig) -> dict:
    from fractalflow.data.emoji import load_emoji
    from fractalflow.evaluation.alignment import load_alignment_encoder
    from fractalflow.evaluation.evaluate import EvalSettings, evaluate

    eval_settings = EvalSettings(num_images=case.eval_images, batch_size=32, generation=config)
    held_out = load_emoji(case.data, image_size=64, split="eval")
    result = evaluate(pipeline, held_out, eval_settings, alignment=load_alignment_encoder(), progress=False)
    extra = {"seconds_per_image": result["seconds_per_image"], "fd_resampled": result["fd_resampled"]}
    return {**result["metrics"], **extra}


def run_case_in_subprocess(case: BenchCase) -> dict:
    command = [sys.executable, "-m", "fractalflow.inference.bench", json.dumps(case.to_dict())]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench case {case.profile}/{case.resolution} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def default_profiles() -> list[str]:
    return ["gpu"] if torch.cuda.is_available() else ["cpu", "edge"]


def run_bench(
    profiles: list[str],
    resolutions: list[str],
    model: str = "",
    eval_images: int = 0,
    data: str = "data/emoji",
    early_stop: float = 0.0,
    repeats: int = 3,
    reference: str = "",
) -> dict:
    """Every (baseline and profile) x resolution, each in a fresh process; rows carry ratios to
    the baseline and, with a ``reference`` model folder, its paired timings."""
    for name in profiles:
        if name not in PROFILES:
            get_profile(name)  # raises the error that names the allowed profiles
    BenchCase(early_stop=early_stop, eval_images=eval_images, repeats=repeats)  # raises before any case runs
    rows = []
    for resolution in resolutions:
        base = None
        for name in [BASELINE, *profiles]:
            case = BenchCase(
                profile=name,
                resolution=resolution,
                model=model,
                early_stop=0.0 if name == BASELINE else early_stop,
                eval_images=eval_images,
                data=data,
                repeats=repeats,
                reference=reference,
            )
            print(f"bench: {name} at {resolution} ...", file=sys.stderr, flush=True)
            row = run_case_in_subprocess(case)
            base = base or row
            row["time_ratio"] = row["seconds_to_image"] / base["seconds_to_image"]
            row["rss_ratio"] = row["peak_rss_mb"] / base["peak_rss_mb"]
            if "eval" in row:
                row["fd_ratio"] = row["eval"]["fd_effnet_l0"] / base["eval"]["fd_effnet_l0"]
            rows.append(row)
    return {"rows": rows}


def format_table(rows: list[dict]) -> str:
    header = (
        f"{'profile':9s} {'resolution':10s} {'px':>4s} {'1st preview s':>13s} {'image s':>8s} {'x base':>6s} "
        f"{'img/s b1':>8s} {'img/s best':>10s} {'RSS MB':>7s} {'x base':>6s} {'FD':>7s} {'x base':>6s}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        fd = row.get("eval", {}).get("fd_effnet_l0")
        lines.append(
            f"{row['case']['profile']:9s} {row['case']['resolution']:10s} {row['size']:4d} "
            f"{row['seconds_to_first_preview']:13.3f} {row['seconds_to_image']:8.3f} {row['time_ratio']:6.2f} "
            f"{row['images_per_s_batch1']:8.2f} {row['images_per_s_best']:10.2f} {row['peak_rss_mb']:7.0f} "
            f"{row['rss_ratio']:6.2f} {'' if fd is None else f'{fd:7.1f}':>7s} "
            f"{'' if fd is None else format(row['fd_ratio'], '6.3f'):>6s}"
        )
    for row in rows:
        if "time_vs_reference" in row:
            lines.append(
                f"{row['case']['profile']}/{row['case']['resolution']}: {row['time_vs_reference']:.3f}x the reference "
                f"model's seconds to the image ({row['reference_seconds_to_image']:.3f} s), median of "
                f"{len(row['samples']['seconds_to_image'])} pairs drawn alternately"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure(BenchCase.from_dict(json.loads(sys.argv[1])))))
