"""``fractalflow tune``: search sampling settings for speed and quality at once (Optuna).

Each trial is a :class:`~fractalflow.generation.GenerationConfig` (steps, guidance and where
it starts, the time grid's shift, sampler, early stop, step caching) over the model's
defaults. It draws one image per **training** caption (never the held-out split) and is
scored on two objectives, both minimised: seconds per image (in batches) and FD-EffNetL0
against the real images of those captions. The first trial is the model's own defaults, so
the Pareto front is read against them. Optuna's NSGA-II sampler explores; the chosen config
is the fastest Pareto trial whose FD is within ``fd_tolerance`` of the defaults' (equal
quality, less time), else the defaults themselves. ``--write`` stores it as the model's
``generation_config.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from fractalflow.config import JsonConfig, check_ranges
from fractalflow.evaluation.features import EffNetFeatures
from fractalflow.evaluation.frechet import frechet_distance_of_features
from fractalflow.events import images_to_tensor
from fractalflow.flow.samplers import SAMPLERS
from fractalflow.generation import GenerationConfig
from fractalflow.pipeline import FractalFlowPipeline

ADAPTIVE_CHOICES = ("off", "auto")
EARLY_STOPS = (0.0, 0.01, 0.02, 0.05)
GUIDED_DOWN_TO = (0.0, 0.3, 0.5, 0.7)  # guidance applies from t = 1 (noise) down to here; 0: every step
TIME_SHIFTS = (1.0, 1.5, 2.0, 3.0)  # 1: an even time grid; SD3 samples at 3


@dataclass(frozen=True)
class TuneSettings(JsonConfig):
    """How long to search (``trials``), on how many training captions, and how much FD the
    chosen config may give up against the defaults (``fd_tolerance``, relative)."""

    trials: int = 30
    captions: int = 200
    batch_size: int = 32
    fd_tolerance: float = 0.02
    max_steps: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(
            "TuneSettings",
            [
                ("trials", self.trials, "from 2 to 1000", 2 <= self.trials <= 1000),
                ("captions", self.captions, "from 2 to 10000", 2 <= self.captions <= 10_000),
                ("batch_size", self.batch_size, ">= 1", self.batch_size >= 1),
                ("fd_tolerance", self.fd_tolerance, "in [0, 1)", 0 <= self.fd_tolerance < 1),
                ("max_steps", self.max_steps, "from 2 to 1000", 2 <= self.max_steps <= 1000),
            ],
        )


def suggest(trial, defaults: GenerationConfig, settings: TuneSettings) -> GenerationConfig:
    """The GenerationConfig an Optuna trial proposes, over ``defaults``."""
    return defaults.merged(
        steps=trial.suggest_int("steps", 2, settings.max_steps),
        guidance=trial.suggest_float("guidance", 1.0, 8.0),
        guidance_interval=(trial.suggest_categorical("guided_down_to", list(GUIDED_DOWN_TO)), 1.0),
        time_shift=trial.suggest_categorical("time_shift", list(TIME_SHIFTS)),
        sampler=trial.suggest_categorical("sampler", list(SAMPLERS)),
        early_stop=trial.suggest_categorical("early_stop", list(EARLY_STOPS)),
        adaptive=trial.suggest_categorical("adaptive", list(ADAPTIVE_CHOICES)),
    )


def as_params(config: GenerationConfig) -> dict:
    """The trial parameters that reproduce ``config`` (for enqueueing the defaults)."""
    low, high = config.guidance_interval or (0.0, 1.0)
    return {
        "steps": config.steps,
        "guidance": config.guidance,
        "guided_down_to": low if high == 1.0 and low in GUIDED_DOWN_TO else 0.0,
        "time_shift": config.time_shift if config.time_shift in TIME_SHIFTS else 1.0,
        "sampler": config.sampler,
        "early_stop": config.early_stop if config.early_stop in EARLY_STOPS else 0.0,
        "adaptive": config.adaptive if config.adaptive in ADAPTIVE_CHOICES else "off",
    }


def score(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    real_features: np.ndarray,
    features: EffNetFeatures,
    config: GenerationConfig,
    settings: TuneSettings,
) -> tuple[float, float]:
    """(seconds per image, FD-EffNetL0) of ``config`` on ``captions``, image i with seed ``seed + i``."""
    images, seconds = [], 0.0
    for start in range(0, len(captions), settings.batch_size):
        begin = time.perf_counter()
        chunk = captions[start : start + settings.batch_size]
        result = pipeline.generate(chunk, seed=settings.seed + start, config=config)
        seconds += time.perf_counter() - begin
        images.append(images_to_tensor(result.images))
    fake = features.features((torch.cat(images).float() / 255).split(128))
    return seconds / len(captions), frechet_distance_of_features(real_features, fake)


def pareto_front(trials: list[dict]) -> list[dict]:
    """The trials no other trial beats on both objectives (lower seconds and lower FD)."""
    return [
        t
        for t in trials
        if not any(
            o["seconds"] <= t["seconds"] and o["fd"] <= t["fd"] and (o["seconds"], o["fd"]) != (t["seconds"], t["fd"])
            for o in trials
        )
    ]


def choose(trials: list[dict], fd_tolerance: float) -> dict:
    """The fastest Pareto trial within ``fd_tolerance`` of the defaults' FD (trial 0)."""
    defaults = trials[0]
    allowed = [t for t in pareto_front(trials) if t["fd"] <= defaults["fd"] * (1 + fd_tolerance)]
    return min(allowed, key=lambda t: t["seconds"]) if allowed else defaults


def tune(pipeline: FractalFlowPipeline, captions: list[str], real_images: torch.Tensor, settings: TuneSettings) -> dict:
    """Run the search; ``real_images``: uint8 ``(N, C, H, W)``, the real images of ``captions``.
    Returns every trial, the Pareto front and the chosen config."""
    try:
        import optuna
    except ImportError as error:
        raise ImportError("fractalflow tune needs Optuna: pip install 'fractalflow[tune]'") from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    features = EffNetFeatures(size=128)
    real_features = features.features((real_images.float() / 255).split(128))
    defaults = pipeline.generation_config
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=optuna.samplers.NSGAIISampler(seed=settings.seed)
    )
    study.enqueue_trial(as_params(defaults))
    trials: list[dict] = []

    def objective(trial) -> tuple[float, float]:
        config = suggest(trial, defaults, settings)
        if trial.number == 0:  # enqueued with the defaults' values: run the defaults exactly
            config = defaults
        seconds, fd = score(pipeline, captions, real_features, features, config, settings)
        trials.append({"trial": trial.number, "config": config.describe(), "seconds": seconds, "fd": fd})
        return seconds, fd

    study.optimize(objective, n_trials=settings.trials)
    chosen = choose(trials, settings.fd_tolerance)
    return {"settings": settings.to_dict(), "trials": trials, "pareto": pareto_front(trials), "chosen": chosen}


def pareto_svg(result: dict, width: int = 480, height: int = 320, pad: int = 48) -> str:
    """Every trial as a dot (seconds per image against FD), the Pareto front joined, the
    defaults in black and the chosen config ringed."""
    trials = result["trials"]
    xs, ys = [t["seconds"] for t in trials], [t["fd"] for t in trials]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0

    def xy(t: dict) -> tuple[float, float]:
        x = pad + (t["seconds"] - min(xs)) / span_x * (width - 2 * pad)
        return x, height - pad - (t["fd"] - min(ys)) / span_y * (height - 2 * pad)

    dots = "".join(f'<circle cx="{xy(t)[0]:.1f}" cy="{xy(t)[1]:.1f}" r="3" fill="#93c5fd"/>' for t in trials)
    front = sorted(result["pareto"], key=lambda t: t["seconds"])
    line = " ".join(f"{xy(t)[0]:.1f},{xy(t)[1]:.1f}" for t in front)
    base, chosen = xy(trials[0]), xy(result["chosen"])
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        '<rect width="100%" height="100%" fill="white"/>'
        f'{dots}<polyline fill="none" stroke="#2563eb" points="{line}"/>'
        f'<circle cx="{base[0]:.1f}" cy="{base[1]:.1f}" r="4" fill="black"/>'
        f'<circle cx="{chosen[0]:.1f}" cy="{chosen[1]:.1f}" r="7" fill="none" stroke="#dc2626" stroke-width="2"/>'
        f'<text x="{pad}" y="{height - 12}" font-size="11">seconds per image: {min(xs):.3f} to {max(xs):.3f}</text>'
        f'<text x="4" y="16" font-size="11">FD-EffNetL0: {min(ys):.1f} (bottom) to {max(ys):.1f} (top); '
        "black: defaults, red ring: chosen</text></svg>\n"
    )
