"""CurriculumScheduler: train in stages, by resolution, timestep emphasis and data.

A curriculum is written as a spec string (a ``TrainConfig`` field and a ``--curriculum``
option), stages separated by commas, each ``SIZES[@MEAN][/KIND]:SHARE``:

- ``SIZES``: the image sizes drawn in the stage, ``+``-separated (``32``, ``64+128``); the
  batch is resized to keep the pixels per step, as ``TrainConfig.resolutions`` does;
- ``@MEAN``: the logit-normal timestep mean in the stage (negative: nearer the data);
- ``/KIND``: draw only images of this kind (``emoji`` or ``icon``; needs an emoji dataset);
- ``SHARE``: the stage's share of the training steps.

E.g. ``32:0.4,64:0.4,64+128:0.2`` or ``32/emoji:0.2,32:0.3,64:0.5``.

Pacing ``fixed``: each stage takes its share. Pacing ``plateau``: a stage ends once its
smoothed loss has stopped falling (the mean of the last ``window`` losses improved by less than
``tolerance``, relative, over the ``window`` before), after at least ``min_share`` of its share
and at most all of it; the steps a stage leaves go to the last stage. The scheduler's state
(stage, where it started, the recent losses) is saved in every checkpoint, so a resumed run
moves on at exactly the same step.

References: Bengio et al. 2009, "Curriculum Learning"; progressive resolution as in
Karras et al. 2018 (ProGAN) and the low-resolution pre-training of SD3 and PixArt-α.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PACINGS = ("fixed", "plateau")
KINDS = ("emoji", "icon")
STAGE = re.compile(
    r"^(?P<sizes>\d+(?:\+\d+)*)(?:@(?P<mean>-?\d+(?:\.\d+)?))?(?:/(?P<kind>[a-z]+))?:(?P<share>\d*\.?\d+)$"
)


@dataclass(frozen=True)
class Stage:
    """One stage: sizes drawn, timestep mean (None: the run's), kind of image ("": all), share of steps."""

    sizes: tuple[int, ...]
    timestep_mean: float | None
    kind: str
    share: float

    def describe(self) -> str:
        text = "+".join(map(str, self.sizes)) + " px"
        if self.timestep_mean is not None:
            text += f", t mean {self.timestep_mean:g}"
        return text + (f", {self.kind} only" if self.kind else "")


def parse_curriculum(spec: str) -> tuple[Stage, ...]:
    """The stages of a spec string; a clear error names the stage and the expected form."""
    stages = []
    for part in (p.strip() for p in spec.split(",")):
        found = STAGE.match(part)
        if not found:
            raise ValueError(
                f"curriculum stage {part!r}: expected SIZES[@MEAN][/KIND]:SHARE, e.g. 32:0.4 or 64+128:0.2"
            )
        kind = found["kind"] or ""
        if kind and kind not in KINDS:
            raise ValueError(f"curriculum stage {part!r}: kind {kind!r}; allowed: {', '.join(KINDS)}")
        sizes = tuple(int(s) for s in found["sizes"].split("+"))
        if min(sizes) < 1 or float(found["share"]) <= 0:
            raise ValueError(f"curriculum stage {part!r}: sizes and share must be positive")
        mean = None if found["mean"] is None else float(found["mean"])
        stages.append(Stage(sizes, mean, kind, float(found["share"])))
    if abs(sum(s.share for s in stages) - 1.0) > 1e-6:
        raise ValueError(f"curriculum shares add up to {sum(s.share for s in stages):g}; they must add up to 1")
    return tuple(stages)


class CurriculumScheduler:
    """Which stage a step is in, for a run of ``steps`` steps; fed every step's loss."""

    def __init__(
        self,
        stages: tuple[Stage, ...],
        steps: int,
        pacing: str = "fixed",
        min_share: float = 0.5,
        window: int = 100,
        tolerance: float = 0.01,
    ):
        if pacing not in PACINGS:
            raise ValueError(f"curriculum pacing {pacing!r}; allowed: {', '.join(PACINGS)}")
        if not 0 < min_share <= 1:
            raise ValueError(f"curriculum min_share={min_share} must be in (0, 1]")
        self.stages, self.steps, self.pacing = stages, steps, pacing
        self.min_share, self.window, self.tolerance = min_share, window, tolerance
        self.index, self.started, self.losses = 0, 0, []

    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    def planned_end(self, index: int) -> int:
        """The step at which stage ``index`` ends at the latest (its share after its start)."""
        if index == len(self.stages) - 1:
            return self.steps
        return self.started + round(self.stages[index].share * self.steps)

    def plateaued(self) -> bool:
        if len(self.losses) < 2 * self.window:
            return False
        before = sum(self.losses[-2 * self.window : -self.window]) / self.window
        recent = sum(self.losses[-self.window :]) / self.window
        return (before - recent) < self.tolerance * abs(before)

    def observe(self, step: int, loss: float) -> bool:
        """Record the loss of ``step`` (the count of steps done); True if the next step starts a new stage."""
        if self.index == len(self.stages) - 1:
            return False
        self.losses = (self.losses + [loss])[-2 * self.window :]
        shortest = self.started + round(self.min_share * self.stage.share * self.steps)
        done = step >= self.planned_end(self.index)
        if self.pacing == "plateau" and step >= shortest and self.plateaued():
            done = True
        if done:
            self.index, self.started, self.losses = self.index + 1, step, []
        return done

    def state_dict(self) -> dict:
        return {"index": self.index, "started": self.started, "losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.index, self.started, self.losses = state["index"], state["started"], list(state["losses"])
