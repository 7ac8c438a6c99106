"""``fractalflow calibrate``: find the step-caching settings that reach each target speed-up
at the least quality loss, on training captions, and write them beside the model.

Every candidate :class:`CacheSettings` draws the same captions with the same seeds as full
compute. Its speed-up is counted from what it skipped, not timed per candidate, so a busy
machine cannot skew the choice between candidates: the levels, cross-attention layers and
unconditional twins it served from store, each weighed by its share of a forward pass. The
shares are seconds measured once on this machine (:meth:`ForwardCost.time`; on a 2-core
CPU level 1 does 75 % of the FLOPs of a forward pass but takes 73 % of its time for one
image and 61 % for 32) or, with ``cost="flops"``, FLOPs counted with
``torch.utils.flop_counter``. Each row keeps both.
Its quality loss is the mean EfficientNet-Lite0 feature distance of each image to its
full-compute twin, relative to the mean distance between two different full-compute images
(0: identical; 1: as different as two other pictures). ``benchmarks/adaptive.py`` then
measures wall-clock and FD of the chosen policies on the held-out split.

Coarse to fine, the scales after the first re-noise an upsampled image only halfway and
early stopping already ends them after two or three steps, but at twice the model's size each
of those steps costs four of the first scale's. So each chosen policy is drawn again at twice
the model's size, with early stopping, as planned and with fewer refinement steps
(``refine_steps``); it keeps the fewest whose images stay within ``max_refine_error`` of its own.

Calibration reads only the training split (:func:`training_captions`): the held-out
captions stay unseen by every choice the eval then judges.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fractalflow.config import MAX_GUIDANCE, MAX_STEPS, JsonConfig, check_ranges
from fractalflow.events import images_to_tensor
from fractalflow.files import atomic_write_text
from fractalflow.model.adaptive import CacheSettings
from fractalflow.model.adaptive_policies import ADAPTIVE_FILE, MAX_SPEEDUP, AdaptivePolicies
from fractalflow.model.flops import module_flops
from fractalflow.pipeline import FractalFlowPipeline


@dataclass(frozen=True)
class CalibrationSettings(JsonConfig):
    """``captions`` training captions drawn with ``steps`` steps at ``guidance`` (None: the
    model's sampling defaults, its guidance interval included; image ``i`` with seed
    ``seed + i``), ``batch_size`` at a time; ``targets``: the speed-ups to
    find settings for; ``auto``: the target ``adaptive="auto"`` uses (None: auto stays off);
    ``max_error``: the largest feature error a policy may have (a target that only worse
    candidates reach gets no policy: a request for it gets the next smaller one); ``cost``:
    what the speed-ups count, "seconds" of the forward pass and its parts measured on this
    machine (:meth:`ForwardCost.time`) for a guided batch of ``cost_batch`` images (1: one
    image at a time, as the CLI and a lone request run; in larger batches the inner levels
    take a smaller share of the time, so the same settings save less) or "flops";
    ``refine_steps``: the refinement steps to try for each chosen policy, at twice the model's
    size with early stop ``refine_early_stop``, keeping the fewest within ``max_refine_error``
    of the policy as planned (empty: no refinement calibration)."""

    captions: int = 64
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int = 32
    targets: tuple[float, ...] = (1.5, 2.0, 3.0)
    auto: float | None = 1.5
    max_error: float = 0.5
    cost: str = "seconds"
    cost_batch: int = 1
    refine_steps: tuple[int, ...] = (1, 2)
    max_refine_error: float = 0.1
    refine_early_stop: float = 0.02

    def __post_init__(self) -> None:
        check_ranges(
            "CalibrationSettings",
            [
                ("captions", self.captions, "from 2 to 4096", 2 <= self.captions <= 4096),
                ("steps", self.steps, f"from 2 to {MAX_STEPS}", self.steps is None or 2 <= self.steps <= MAX_STEPS),
                (
                    "guidance",
                    self.guidance,
                    f"from 0 to {MAX_GUIDANCE}",
                    self.guidance is None or 0 <= self.guidance <= MAX_GUIDANCE,
                ),
                ("batch_size", self.batch_size, "from 1 to 1024", 1 <= self.batch_size <= 1024),
                (
                    "targets",
                    self.targets,
                    f"speed-ups above 1 and at most {MAX_SPEEDUP:g}",
                    bool(self.targets) and all(1 < target <= MAX_SPEEDUP for target in self.targets),
                ),
                ("auto", self.auto, "one of the targets or None", self.auto is None or self.auto in self.targets),
                ("max_error", self.max_error, "> 0", self.max_error > 0),
                ("cost", self.cost, "'seconds' or 'flops'", self.cost in ("seconds", "flops")),
                ("cost_batch", self.cost_batch, "from 1 to 1024", 1 <= self.cost_batch <= 1024),
                (
                    "refine_steps",
                    self.refine_steps,
                    f"steps from 1 to {MAX_STEPS}",
                    all(1 <= steps <= MAX_STEPS for steps in self.refine_steps),
                ),
                ("max_refine_error", self.max_refine_error, ">= 0", self.max_refine_error >= 0),
                ("refine_early_stop", self.refine_early_stop, "from 0 to 1", 0 <= self.refine_early_stop <= 1),
            ],
        )


def candidate_settings(levels: int) -> list[CacheSettings]:
    """The grid searched, for each inner level: reuse on a fixed schedule once the first 10,
    20 or 30 % of the trajectory are computed in full; reuse until the level's input has
    drifted past a threshold (a per-input decision); both extrapolating. Level 1's schedules
    and thresholds again with guidance caching below t = 0.9 (the unconditional twins on
    every other step), and guidance caching alone. Fewer sampling steps (70, 50 and 35 % of
    them), alone and with level 1 every other step: the plain way to spend less, which a
    cache must beat to be chosen. Two plain-reuse schedules and cross-attention freezing
    alone are measured for comparison."""
    inner = range(1, levels)
    scheduled = [
        CacheSettings(depth=depth, every=every, start=start, extrapolate=True)
        for depth, every, start in itertools.product(inner, (2, 3, 4, 6), (0.9, 0.8, 0.7))
    ]
    drifting = [
        CacheSettings(depth=depth, every=8, drift=drift, extrapolate=True)
        for depth, drift in itertools.product(inner, (0.06, 0.1, 0.15, 0.2))
    ]
    twins = dict(guidance_every=2, guidance_start=0.9)
    guided = [CacheSettings(depth=1, every=every, start=0.9, extrapolate=True, **twins) for every in (2, 3)]
    guided += [CacheSettings(depth=1, every=8, drift=drift, extrapolate=True, **twins) for drift in (0.1, 0.15)]
    guided += [CacheSettings(depth=0, extrapolate=True, **twins)]
    fewer_steps = [CacheSettings(depth=0, step_fraction=fraction) for fraction in (0.7, 0.5, 0.35)]
    fewer_steps += [
        CacheSettings(depth=1, every=2, start=0.9, extrapolate=True, step_fraction=fraction) for fraction in (0.7, 0.5)
    ]
    plain = [CacheSettings(depth=1, every=every, start=0.7) for every in (2, 3)]
    frozen = [CacheSettings(depth=0, freeze_cross=t) for t in (0.6, 0.3)]
    return scheduled + drifting + guided + fewer_steps + plain + frozen


def training_captions(data: str | Path, count: int, seed: int = 0) -> list[str]:
    """``count`` captions of the training split of a prepared emoji folder, drawn at random
    with ``seed`` (never the held-out split). Reads the records only, not the pixels."""
    from fractalflow.data.emoji import read_records

    captions = [record.caption() for record in read_records(data) if record.split == "train"]
    if count > len(captions):
        raise ValueError(f"captions={count}: the training split of {data} has {len(captions)}")
    return [captions[i] for i in random.Random(seed).sample(range(len(captions)), count)]


@dataclass(frozen=True)
class ForwardCost:
    """The cost of one forward pass, of each inner level (``levels[d]``: the level at depth d
    with all it holds) and of one cross-attention layer (their mean), in FLOPs
    (:meth:`count`) or in seconds on this machine (:meth:`time`)."""

    forward: float
    levels: dict[int, float]
    cross: float

    @classmethod
    def count(cls, model: torch.nn.Module, size: int) -> ForwardCost:
        per_module = module_flops(model, size)
        root = type(model).__name__
        levels = {d: per_module[f"{root}.body" + ".inner" * d] for d in range(1, model.config.num_levels)}
        cross = [flops for name, flops in per_module.items() if name.endswith(".cross")]
        return cls(per_module[root], levels, sum(cross) / max(len(cross), 1))

    @classmethod
    @torch.no_grad()
    def time(cls, pipeline: FractalFlowPipeline, prompt: str, rows: int, repeats: int = 5) -> ForwardCost:
        """Median seconds of a forward pass of ``rows`` copies of ``prompt`` and, measured inside the same
        passes, of its inner levels and cross-attention layers. FLOPs overstate what the
        inner levels cost on a CPU (their small token grids run faster per FLOP than the
        outer level's windows), so the speed-ups calibrate chooses by are counted in these."""
        model, size = pipeline.model, pipeline.config.sample_size
        levels = {d: model.get_submodule("body" + ".inner" * d) for d in range(1, model.config.num_levels)}
        crosses = [m.cross for m in model.modules() if getattr(m, "cross", None) is not None]
        timed = [model, *levels.values(), *crosses]
        spent: list[list[float]] = [[] for _ in timed]  # seconds of each pass through each module
        handles = []
        for module, seconds in zip(timed, spent):
            started: list[float] = []
            handles.append(module.register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter())))
            handles.append(
                module.register_forward_hook(
                    lambda *_, s=started, out=seconds: out.append(time.perf_counter() - s.pop())
                )
            )
        x = torch.randn(rows, model.config.in_channels, size, size, device=pipeline.device)
        cond = pipeline.encode_prompts([prompt]).repeat(rows)
        try:
            for _ in range(repeats + 1):  # the first warms up
                model(x, torch.full((rows,), 0.5, device=pipeline.device), cond)
        finally:
            for handle in handles:
                handle.remove()
        forward, *medians = [statistics.median(seconds[1:]) for seconds in spent]  # without the warm-up pass
        cross = medians[len(levels) :]
        return cls(forward, dict(zip(levels, medians)), sum(cross) / max(len(cross), 1))

    def speedup(self, settings: CacheSettings, report: dict[str, int], full_rows: int) -> float:
        """Full compute's cost (``full_rows`` forward-pass rows: a guided image is two) over
        what a run with ``report`` (AdaptiveDepth's, of the steps it ran) spent."""
        saved = (
            report["reused"] * self.levels.get(settings.depth, 0)
            + report["cross_frozen"] * self.cross
            + report["twins_skipped"] * self.forward
        )
        return full_rows * self.forward / (report["rows"] * self.forward - saved)


def feature_error(full: torch.Tensor, cached: torch.Tensor) -> float:
    """Mean distance of each cached image's features to its full-compute twin's, over the mean
    distance between two different full-compute images."""
    paired = (cached - full).norm(dim=1).mean()
    between = torch.cdist(full, full)
    others = between.sum() / (len(full) * (len(full) - 1))
    return float(paired / others)


def draw(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    settings: CalibrationSettings,
    cache: CacheSettings | str,
    **sampling,
) -> tuple[torch.Tensor, dict[str, int]]:
    """uint8 images of ``captions`` under ``cache`` (CacheSettings or "off") and ``sampling``
    settings over the model's defaults, and the summed AdaptiveDepth reports of the batches."""
    images, totals = [], {}
    for start in range(0, len(captions), settings.batch_size):
        result = pipeline.generate(
            captions[start : start + settings.batch_size],
            steps=settings.steps,
            guidance=settings.guidance,
            seed=settings.seed + start,
            adaptive=cache,
            **sampling,
        )
        images.append(images_to_tensor(result.images))
        for key in ("rows", "computed", "reused", "cross_frozen", "twins_skipped", "blocks_run", "blocks_full"):
            totals[key] = totals.get(key, 0) + result.metadata["adaptive"][key]
    return torch.cat(images), totals


def calibrate(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    settings: CalibrationSettings,
    candidates: list[CacheSettings] | None = None,
    progress: bool = True,
) -> dict:
    """Measure every candidate against full compute on ``captions`` and choose, for each
    target, the one of least feature error among those that reach it. Returns the
    :class:`AdaptivePolicies` (``policies``, ``auto``) with every candidate's row."""
    from fractalflow.evaluation.features import EffNetFeatures

    candidates = candidates or candidate_settings(pipeline.config.num_levels)
    flops = ForwardCost.count(pipeline.model, pipeline.config.sample_size)
    cost = ForwardCost.time(pipeline, captions[0], 2 * settings.cost_batch) if settings.cost == "seconds" else flops
    features = EffNetFeatures(size=128)

    def embed(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(features.features((images.float() / 255.0).split(128)))

    full_images, full_report = draw(pipeline, captions, settings, "off")
    full = embed(full_images)
    rows = []
    for cache in tqdm(candidates, desc="calibrate", unit="candidate", disable=not progress):
        images, report = draw(pipeline, captions, settings, cache)
        rows.append(
            {
                "settings": cache.to_dict(),
                "speedup": cost.speedup(cache, report, full_report["rows"]),
                "flop_speedup": flops.speedup(cache, report, full_report["rows"]),
                "error": feature_error(full, embed(images)),
                "blocks_run": report["blocks_run"],
                "blocks_full": report["blocks_full"],
            }
        )
    chosen, refinement = calibrate_refinement(
        pipeline, captions, settings, choose_policies(rows, settings.targets, settings.max_error), embed
    )
    auto = settings.auto if settings.auto in chosen else None
    calibration = {"settings": settings.to_dict(), "rows": rows, "refinement": refinement}
    return {**AdaptivePolicies(chosen, auto).to_dict(), "calibration": calibration}


def calibrate_refinement(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    settings: CalibrationSettings,
    chosen: dict[float, CacheSettings],
    embed: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[dict[float, CacheSettings], list[dict]]:
    """``chosen``, each policy with the fewest of ``settings.refine_steps`` whose images at twice
    the model's size (coarse to fine, early stop ``refine_early_stop``) stay within
    ``max_refine_error`` of the policy's own (as planned where none does), and a row per trial."""
    size = 2 * pipeline.config.sample_size
    sampling = dict(resolution=size, early_stop=settings.refine_early_stop)
    refined, rows = dict(chosen), []
    for target, policy in chosen.items():
        planned = embed(draw(pipeline, captions, settings, policy, **sampling)[0])
        for steps in sorted(settings.refine_steps):
            trial = replace(policy, refine_steps=steps)
            error = feature_error(planned, embed(draw(pipeline, captions, settings, trial, **sampling)[0]))
            rows.append({"target": target, "size": size, "refine_steps": steps, "error": error})
            if error <= settings.max_refine_error:
                refined[target] = trial
                break
    return refined, rows


def choose_policies(rows: list[dict], targets: tuple[float, ...], max_error: float) -> dict[float, CacheSettings]:
    """For each target, the candidate row of least error among those that reach it, if its
    error is at most ``max_error``."""
    chosen = {}
    for target in targets:
        reaching = [row for row in rows if row["speedup"] >= target and row["error"] <= max_error]
        if reaching:
            chosen[target] = CacheSettings.from_dict(min(reaching, key=lambda row: row["error"])["settings"])
    return chosen


def write_policies(folder: str | Path, calibration: dict) -> Path:
    """``calibration`` (from :func:`calibrate`) as ``folder/adaptive.json``, checked by reading it back."""
    AdaptivePolicies.from_dict(calibration)
    path = Path(folder) / ADAPTIVE_FILE
    atomic_write_text(path, json.dumps(calibration, indent=2) + "\n")
    return path
