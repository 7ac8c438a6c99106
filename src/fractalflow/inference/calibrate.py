"""``fractalflow calibrate``: find the step-caching settings that reach each target speed-up
at the least quality loss, on training captions, and write them beside the model.

Every candidate :class:`CacheSettings` draws the same captions with the same seeds as full
compute, both with early stopping (``early_stop``, as the ``cpu`` benchmarks sample). Its
speed-up is counted from what it skipped, not timed per candidate, so a busy machine cannot
skew the choice between candidates: the levels, cross-attention layers and
unconditional twins it served from store, each weighed by its share of a forward pass. The
shares are seconds measured once on this machine (:meth:`PassCost.time`; on a 2-core
CPU level 1 does 75 % of the FLOPs of a forward pass but takes 73 % of its time for one
image and 61 % for 32), as a part per pass and a part per batch row (a lone image's pass
costs 80 % of one with its unconditional twin, not half), or, with ``cost="flops"``, FLOPs
counted with ``torch.utils.flop_counter``. Each row keeps both. The count decides which
candidates may reach a target; the least-error ones among them are then timed against full
compute in pairs (:func:`paired_speedup`), and the wall-clock decides (``timing_pairs``).
Its quality loss is the mean EfficientNet-Lite0 feature distance of each image to its
full-compute twin, relative to the mean distance between two different full-compute images
(0: identical; 1: as different as two other pictures). ``benchmarks/adaptive.py`` then
measures wall-clock and FD of the chosen policies on the held-out split.

Coarse to fine, the scales after the first re-noise an upsampled image only halfway and
early stopping already ends them after two or three steps, but at twice the model's size each
of those steps costs four of the first scale's, so what pays there differs. Each larger size
(``sizes``; by default twice the model's) is calibrated apart: every candidate, with each of a
few refinement steps (``refine_steps``), is drawn at that size and judged
against full compute at that size, its speed-up counted over all the scales it ran at, each at
its own cost. Images of that size then use those policies (:meth:`AdaptivePolicies.for_size`).

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
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fractalflow.config import MAX_GUIDANCE, MAX_SIDE, MAX_STEPS, JsonConfig, check_ranges
from fractalflow.events import images_to_tensor
from fractalflow.files import atomic_write_text
from fractalflow.inference.bench import interleaved
from fractalflow.model.adaptive import OFF, CacheSettings
from fractalflow.model.adaptive_policies import ADAPTIVE_FILE, MAX_SPEEDUP, AdaptivePolicies
from fractalflow.model.flops import module_flops
from fractalflow.pipeline import FractalFlowPipeline


@dataclass(frozen=True)
class CalibrationSettings(JsonConfig):
    """``captions`` training captions drawn with ``steps`` steps at ``guidance`` (None: the
    model's sampling defaults, its guidance interval included; image ``i`` with seed
    ``seed + i``), ``batch_size`` at a time (None: ``cost_batch``, as the costs count them:
    early stopping ends a batch only once all its images have settled, so drawn 32 at a time
    full compute ran 544 passes for 32 captions against 478 one at a time, and shorter
    policies were counted up to 7 % faster than drawn one at a time:
    ``benchmarks/calibration_batch.py``); ``targets``: the speed-ups to
    find settings for; ``auto``: the target ``adaptive="auto"`` uses (None: auto stays off);
    ``max_error``: the largest feature error a policy may have (a target that only worse
    candidates reach gets no policy: a request for it gets the next smaller one; with the
    ``ab2`` sampler, 7 of 20 steps are at 0.54 and cost held-out FD +5 %, where a 0.76 policy
    once cost +28 %); ``timing_pairs``: a candidate reaches a target when its wall-clock
    speed-up, timed against full compute in this many pairs (:func:`paired_speedup`), is at
    least the target; only candidates whose counted speed-up is within ``margin`` of the target
    or above it (``target / margin``) are timed, least error first, at most ``MAX_TIMED`` per
    target; 0: nothing is timed, and a candidate reaches a target when its counted speed-up is
    at least ``target * margin`` (the count moves by about 5 % from one sitting to the next on
    a 2-core CPU: it splits each pass's seconds into a part per pass and a part per row, and
    that split moves with the hour; stop 37's recalibration counted the 1.54x policy 1.51x); ``cost``:
    what the speed-ups count, "seconds" of the forward pass and its parts measured on this
    machine (:meth:`PassCost.time`) for passes of ``cost_batch`` images (1: one
    image at a time, as the CLI and a lone request run; in larger batches the inner levels
    take a smaller share of the time, so the same settings save less) or "flops";
    ``sizes``: the larger image sides to calibrate policies for apart (None: twice the model's
    size; empty: none), each candidate drawn there with each of ``refine_steps`` (the steps of
    every scale after the first); ``early_stop``: the early stop of every draw, full
    compute's included (0: off). Early stopping ends full compute sooner too, and judges only
    steps computed in full, so a cache saves less with it on: calibrated with it, a policy is
    at least as fast without."""

    captions: int = 64
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int | None = None
    targets: tuple[float, ...] = (1.5, 2.0, 3.0)
    auto: float | None = 1.5
    max_error: float = 0.6
    margin: float = 1.05
    timing_pairs: int = 10
    cost: str = "seconds"
    cost_batch: int = 1
    sizes: tuple[int, ...] | None = None
    refine_steps: tuple[int, ...] = (1, 2)
    early_stop: float = 0.02

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
                (
                    "batch_size",
                    self.batch_size,
                    "from 1 to 1024 or None",
                    self.batch_size is None or 1 <= self.batch_size <= 1024,
                ),
                (
                    "targets",
                    self.targets,
                    f"speed-ups above 1 and at most {MAX_SPEEDUP:g}",
                    bool(self.targets) and all(1 < target <= MAX_SPEEDUP for target in self.targets),
                ),
                ("auto", self.auto, "one of the targets or None", self.auto is None or self.auto in self.targets),
                ("max_error", self.max_error, "> 0", self.max_error > 0),
                ("margin", self.margin, "from 1 to 2", 1 <= self.margin <= 2),
                ("timing_pairs", self.timing_pairs, "from 0 to 100", 0 <= self.timing_pairs <= 100),
                ("cost", self.cost, "'seconds' or 'flops'", self.cost in ("seconds", "flops")),
                ("cost_batch", self.cost_batch, "from 1 to 1024", 1 <= self.cost_batch <= 1024),
                (
                    "sizes",
                    self.sizes,
                    f"sides in pixels from 1 to {MAX_SIDE}, or None",
                    self.sizes is None or all(1 <= size <= MAX_SIDE for size in self.sizes),
                ),
                (
                    "refine_steps",
                    self.refine_steps,
                    f"steps from 1 to {MAX_STEPS}, at least one",
                    bool(self.refine_steps) and all(1 <= steps <= MAX_STEPS for steps in self.refine_steps),
                ),
                ("early_stop", self.early_stop, "from 0 to 1", 0 <= self.early_stop <= 1),
            ],
        )

    def policies(self, chosen: dict[float, CacheSettings]) -> AdaptivePolicies:
        """``chosen`` with ``auto`` if it reached that target (else auto stays off)."""
        return AdaptivePolicies(chosen, self.auto if self.auto in chosen else None)

    def larger_sizes(self, native: int) -> tuple[int, ...]:
        """The image sides above the model's ``native`` one to calibrate apart."""
        sizes = (2 * native,) if self.sizes is None else self.sizes
        return tuple(sorted(size for size in set(sizes) if size > native))


def candidate_settings(levels: int) -> list[CacheSettings]:
    """The grid searched, for each inner level: reuse on a fixed schedule once the first 10,
    20 or 30 % of the trajectory are computed in full; reuse until the level's input has
    drifted past a threshold (a per-input decision); both extrapolating. Level 1's schedules
    and thresholds again with guidance caching below t = 0.9 (the unconditional twins on
    every other step), and guidance caching alone. Fewer sampling steps (90 to 35 % of them),
    alone and with level 1 every other step: the plain way to spend less, which a cache must
    beat to be chosen. Two plain-reuse schedules and cross-attention freezing
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
    fewer_steps = [CacheSettings(depth=0, step_fraction=fraction) for fraction in (0.9, 0.8, 0.7, 0.5, 0.4, 0.35)]
    fewer_steps += [
        CacheSettings(depth=1, every=2, start=0.9, extrapolate=True, step_fraction=fraction)
        for fraction in (0.9, 0.85, 0.8, 0.7, 0.5)
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
    def time(
        cls, pipeline: FractalFlowPipeline, prompt: str, rows: int, repeats: int = 5, size: int | None = None
    ) -> ForwardCost:
        """Median seconds of a forward pass of ``rows`` copies of ``prompt`` at ``size`` px (None:
        the model's) and, measured inside the same passes, of its inner levels and
        cross-attention layers. FLOPs overstate what the inner levels cost on a CPU (their
        small token grids run faster per FLOP than the outer level's windows), so the
        speed-ups calibrate chooses by are counted in these."""
        model, size = pipeline.model, size or pipeline.config.sample_size
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


@dataclass(frozen=True)
class PassCost:
    """What forward passes cost: a part per pass and a part per batch row, of the whole pass,
    of each inner level and of a cross-attention layer. On a 2-core CPU a 64 px pass of one
    image costs 0.016 s and one of an image with its unconditional twin 0.020 s: counted by
    rows alone, the first would cost half the second, and the unguided steps that level caching
    and fewer steps save on would look cheaper than they are."""

    per_pass: ForwardCost
    per_row: ForwardCost

    @classmethod
    def fit(cls, one: ForwardCost, many: ForwardCost, rows: int) -> PassCost:
        """The line through a pass of one row (``one``) and one of ``rows`` rows (``many``)."""

        def per_row(single: float, batch: float) -> float:
            return max(0.0, (batch - single) / (rows - 1))

        row = ForwardCost(
            per_row(one.forward, many.forward),
            {d: per_row(one.levels[d], many.levels[d]) for d in one.levels},
            per_row(one.cross, many.cross),
        )
        fixed = ForwardCost(
            one.forward - row.forward, {d: one.levels[d] - row.levels[d] for d in one.levels}, one.cross - row.cross
        )
        return cls(fixed, row)

    @classmethod
    def flops(cls, model: torch.nn.Module, size: int) -> PassCost:
        """FLOPs grow with the rows alone."""
        count = ForwardCost.count(model, size)
        return cls(ForwardCost(0.0, dict.fromkeys(count.levels, 0.0), 0.0), count)

    @classmethod
    def time(cls, pipeline: FractalFlowPipeline, prompt: str, rows: int, size: int | None = None) -> PassCost:
        """Seconds on this machine, fitted to passes of one row and of ``rows`` rows at ``size`` px."""
        one, many = (ForwardCost.time(pipeline, prompt, count, size=size) for count in (1, rows))
        return cls.fit(one, many, rows)

    def spent(self, settings: CacheSettings, report: dict[str, float]) -> float:
        """What the passes of ``report`` (AdaptiveDepth's, at this cost's size) spent less what
        ``settings`` served from store: a level or cross-attention layer served to every row of
        a pass saves its part per pass too, skipped twins only their rows."""
        fixed, row = self.per_pass, self.per_row
        depth = settings.depth
        return (
            fixed.forward * report["forwards"]
            + row.forward * (report["rows"] - report["twins_skipped"])
            - fixed.levels.get(depth, 0.0) * report["level_skips"]
            - row.levels.get(depth, 0.0) * report["reused"]
            - fixed.cross * report["cross_skips"]
            - row.cross * report["cross_frozen"]
        )


def staged_speedup(
    costs: dict[int, PassCost], settings: CacheSettings, reports: dict[int, dict], full: dict[int, dict]
) -> float:
    """Full compute's cost over a run's under ``settings``, both summed over the image sizes their
    scales ran at (``reports`` and ``full``: AdaptiveDepth reports by size), each at its own cost."""
    full_cost = sum(costs[size].spent(OFF, report) for size, report in full.items())
    return full_cost / sum(costs[size].spent(settings, report) for size, report in reports.items())


def feature_error(full: torch.Tensor, cached: torch.Tensor) -> float:
    """Mean distance of each cached image's features to its full-compute twin's, over the mean
    distance between two different full-compute images."""
    paired = (cached - full).norm(dim=1).mean()
    between = torch.cdist(full, full)
    others = between.sum() / (len(full) * (len(full) - 1))
    return float(paired / others)


PASS_COUNTS = ("forwards", "level_skips", "cross_skips")  # report keys that count passes, not rows


def draw(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    settings: CalibrationSettings,
    cache: CacheSettings | str,
    **sampling,
) -> tuple[torch.Tensor, dict[int, dict[str, int]]]:
    """uint8 images of ``captions`` under ``cache`` (CacheSettings or "off") and ``sampling``
    settings over the model's defaults, and the AdaptiveDepth reports of the batches summed by
    the image size the passes ran at, their passes counted as if the images had been drawn
    ``cost_batch`` at a time (a batch's pass that served a level to every row is counted as
    served for each image; a pass that served only some rows, as not)."""
    images, totals = [], {}
    batch = settings.batch_size or settings.cost_batch
    for start in range(0, len(captions), batch):
        result = pipeline.generate(
            captions[start : start + batch],
            steps=settings.steps,
            guidance=settings.guidance,
            seed=settings.seed + start,
            adaptive=cache,
            **sampling,
        )
        images.append(images_to_tensor(result.images))
        as_costed = len(result.images) / settings.cost_batch  # a pass of this batch: that many of cost_batch
        for size, report in result.metadata["adaptive"]["by_size"].items():
            summed = totals.setdefault(size, {})
            for key, value in report.items():
                summed[key] = summed.get(key, 0) + value * (as_costed if key in PASS_COUNTS else 1)
    return torch.cat(images), totals


def calibrate(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    settings: CalibrationSettings,
    candidates: list[CacheSettings] | None = None,
    progress: bool = True,
) -> dict:
    """Measure every candidate against full compute on ``captions`` and choose, for each
    target, the one of least feature error among those that reach it; the same again at each
    larger size (:meth:`CalibrationSettings.larger_sizes`) with each of its refinement steps.
    Returns the :class:`AdaptivePolicies` (``policies``, ``auto``, ``sizes``) with every
    candidate's row (``rows``, and by size ``sizes``)."""
    candidates = candidates or candidate_settings(pipeline.config.num_levels)
    embed = feature_embedder()

    def chosen_from(rows: list[dict], **sampling) -> dict[float, CacheSettings]:
        timed = partial(paired_speedup, pipeline, captions, settings, **sampling) if settings.timing_pairs else None
        return choose_policies(rows, settings.targets, settings.max_error, settings.margin, timed)

    native = pipeline.config.sample_size
    rows = measure(pipeline, captions, settings, candidates, embed, progress, early_stop=settings.early_stop)
    chosen = chosen_from(rows, early_stop=settings.early_stop)
    sizes, size_rows = {}, {}
    for size in settings.larger_sizes(native):
        trials = [replace(cache, refine_steps=steps) for cache in candidates for steps in settings.refine_steps]
        sampling = dict(resolution=size, early_stop=settings.early_stop)
        size_rows[str(size)] = measure(pipeline, captions, settings, trials, embed, progress, **sampling)
        at_size = chosen_from(size_rows[str(size)], **sampling)
        if at_size:
            sizes[size] = settings.policies(at_size)
    calibration = {"settings": settings.to_dict(), "rows": rows, "sizes": size_rows}
    return {**replace(settings.policies(chosen), sizes=sizes).to_dict(), "calibration": calibration}


def feature_embedder() -> Callable[[torch.Tensor], torch.Tensor]:
    """The image features calibration compares with: uint8 images ``(N, C, H, W)`` to their
    EfficientNet-Lite0 features (:func:`feature_error`), 128 images at a time."""
    from fractalflow.evaluation.features import EffNetFeatures

    features = EffNetFeatures(size=128)

    def embed(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(features.features((images.float() / 255.0).split(128)))

    return embed


def measure(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    settings: CalibrationSettings,
    candidates: list[CacheSettings],
    embed: Callable[[torch.Tensor], torch.Tensor],
    progress: bool,
    **sampling,
) -> list[dict]:
    """A row per candidate drawn with ``sampling`` settings: its speed-up over full compute
    (in ``settings.cost`` and in FLOPs), counted over the sizes its scales ran at, and its
    feature error against full compute's images."""
    full_images, full_reports = draw(pipeline, captions, settings, "off", **sampling)
    full = embed(full_images)
    flops = {size: PassCost.flops(pipeline.model, size) for size in full_reports}
    rows = 2 * settings.cost_batch  # a guided batch: the images and their unconditional twins
    costs = flops
    if settings.cost == "seconds":
        costs = {size: PassCost.time(pipeline, captions[0], rows, size=size) for size in full_reports}
    measured = []
    sizes = "/".join(map(str, full_reports))
    for cache in tqdm(candidates, desc=f"calibrate {sizes} px", unit="candidate", disable=not progress):
        images, reports = draw(pipeline, captions, settings, cache, **sampling)
        blocks = {key: sum(report[key] for report in reports.values()) for key in ("blocks_run", "blocks_full")}
        measured.append(
            {
                "settings": cache.to_dict(),
                "speedup": staged_speedup(costs, cache, reports, full_reports),
                "flop_speedup": staged_speedup(flops, cache, reports, full_reports),
                "error": feature_error(full, embed(images)),
                **blocks,
            }
        )
    return measured


MAX_TIMED = 4  # candidates timed per target at most


def choose_policies(
    rows: list[dict],
    targets: tuple[float, ...],
    max_error: float,
    margin: float = 1.0,
    timed: Callable[[CacheSettings], float] | None = None,
) -> dict[float, CacheSettings]:
    """For each target, the candidate row of least error (at most ``max_error``) that reaches it.

    Without ``timed``, a row reaches a target when its counted speed-up is at least ``target *
    margin``. With it, the rows counted at ``target / margin`` or more are timed least error
    first (``timed(settings)``: the wall-clock speed-up, kept in the row as ``paired_speedup``
    and timed once for all targets), at most :data:`MAX_TIMED` per target, and the first whose
    timed speed-up is at least the target reaches it."""

    def wall_clock(row: dict) -> float:
        if "paired_speedup" not in row:
            row["paired_speedup"] = timed(CacheSettings.from_dict(row["settings"]))
        return row["paired_speedup"]

    allowed = sorted((row for row in rows if row["error"] <= max_error), key=lambda row: row["error"])
    chosen = {}
    for target in targets:
        if timed is None:
            winner = next((row for row in allowed if row["speedup"] >= target * margin), None)
        else:
            screened = [row for row in allowed if row["speedup"] >= target / margin][:MAX_TIMED]
            winner = next((row for row in screened if wall_clock(row) >= target), None)
        if winner is not None:
            chosen[target] = CacheSettings.from_dict(winner["settings"])
    return chosen


def paired_speedup(
    pipeline: FractalFlowPipeline,
    captions: list[str],
    settings: CalibrationSettings,
    cache: CacheSettings,
    **sampling,
) -> float:
    """Full compute's wall-clock over ``cache``'s: the median ratio of ``settings.timing_pairs``
    pairs, pair i drawing the same ``cost_batch`` training captions with the same seed under
    each, the two alternately after a warm-up pair (:func:`~fractalflow.inference.bench.interleaved`),
    so a machine that changes speed slows both alike."""

    def timed(adaptive: CacheSettings | str) -> Callable[[int], float]:
        def run(i: int) -> float:
            start = (i * settings.cost_batch) % max(1, len(captions) - settings.cost_batch + 1)
            begin = time.perf_counter()
            pipeline.generate(
                captions[start : start + settings.cost_batch],
                steps=settings.steps,
                guidance=settings.guidance,
                seed=settings.seed + i,
                adaptive=adaptive,
                **sampling,
            )
            return time.perf_counter() - begin

        return run

    cached, full = interleaved(timed(cache), timed("off"), settings.timing_pairs)
    return statistics.median(whole / part for whole, part in zip(full, cached))


def write_policies(folder: str | Path, calibration: dict) -> Path:
    """``calibration`` (from :func:`calibrate`) as ``folder/adaptive.json``, checked by reading it back."""
    AdaptivePolicies.from_dict(calibration)
    path = Path(folder) / ADAPTIVE_FILE
    atomic_write_text(path, json.dumps(calibration, indent=2) + "\n")
    return path
