"""Does a shortened run lose less if it keeps full compute's steps where the picture is laid out?

``step_fraction`` spreads the kept steps over the whole warped time grid, so a 14-step run
leaves full compute's trajectory from its first step. A *head grid* keeps full compute's
20-step grid at the high-noise end, where the layout and the concept are decided, and takes
every other time of it below level ``K`` (level k is grid time ``time_grid(20)[20 - k]``):
``20 - K / 2`` steps. ``K`` is even, so level 8 (t = 0.667, where full compute's guidance ends
on the default model's grid) stays a grid time and no step straddles the interval's end.

Each setting gets calibration's row from ``adaptive_screen.py`` (64 training captions, never
the held-out split, one image at a time, early stop 0.02): its speed-up counted in seconds
measured on this machine and its feature error against full compute. The rows are measured in
one run, with the shipped ``auto`` policy (uniform grid) as the reference.

    python benchmarks/adaptive_head_grid.py   # ~5 min on 2 cores

Writes ``benchmarks/results/adaptive-head-grid.json``.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
from adaptive_screen import screen, write_report

from fractalflow import FractalFlowPipeline
from fractalflow.flow.samplers import time_grid
from fractalflow.model.adaptive_policies import policy_guidance
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
FULL_STEPS = 20
HEAD_STEPS = (11, 12, 13)  # K = 18, 16 and 14; other step counts keep the uniform grid (the reference)
CACHE = "cache.depth=1,cache.every=2,cache.start=0.9,cache.extrapolate=true"
SETTINGS = {
    "auto (uniform 14 steps + level 1)": f"{CACHE},cache.step_fraction=0.7",
    "head grid K=18 (11 steps)": "cache.depth=0,cache.step_fraction=0.55",
    "head grid K=16 (12 steps)": "cache.depth=0,cache.step_fraction=0.6",
    "head grid K=16 (12 steps) + level 1": f"{CACHE},cache.step_fraction=0.6",
    "head grid K=14 (13 steps) + level 1": f"{CACHE},cache.step_fraction=0.65",
}


def head_grid(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """For ``steps`` in :data:`HEAD_STEPS`: the 20-step grid's times at levels ``k >= K`` and at
    the even levels below, ``K = 2 (20 - steps)``; the uniform grid otherwise."""
    if steps not in HEAD_STEPS:
        return time_grid(steps, shift, device)
    lowest_dense = 2 * (FULL_STEPS - steps)
    full = time_grid(FULL_STEPS, shift, device)  # full[i] is level FULL_STEPS - i
    levels = [i for i in range(FULL_STEPS + 1) if FULL_STEPS - i >= lowest_dense or (FULL_STEPS - i) % 2 == 0]
    return full[levels]


def head_grid_guidance(
    interval: tuple[float, float] | None, steps: int, kept_steps: int, time_shift: float
) -> tuple[float, float] | None:
    """``policy_guidance``, but None for a head grid: its guidance ends on a grid time, so no
    step straddles the interval's end."""
    return None if kept_steps in HEAD_STEPS else policy_guidance(interval, steps, kept_steps, time_shift)


def main() -> None:
    pipeline = FractalFlowPipeline.from_pretrained(default_model_folder(), device="cpu")
    with (
        mock.patch("fractalflow.flow.refine.time_grid", head_grid),
        mock.patch("fractalflow.pipeline.policy_guidance", head_grid_guidance),
    ):
        report = screen(pipeline, SETTINGS, REPO / "data" / "emoji")
    for name, row in zip(SETTINGS, report["rows"]):
        row["name"] = name
    write_report(report, "adaptive-head-grid.json")


if __name__ == "__main__":
    main()
