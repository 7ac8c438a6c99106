"""AdaptiveDepth: spend a forward pass's compute only where a step needs it.

Three savings, all across sampling steps:

- **Step caching of an inner level.** An inner level of the hourglass works on the coarsest
  tokens, and its output changes slowly from one step to the next. The chosen level computes
  its output on some steps and, on the others, serves the stored one (DeepCache, Ma et al.
  2024; FORA, Selvaraju et al. 2024) or a first-order extrapolation of its last two
  computations in flow time (TaylorSeer, Liu et al. 2025).
- **Cross-attention freezing.** Below a flow time, each cross-attention layer serves the
  output it computed on its last step above it (TGATE, Zhang et al. 2024): the text has
  done its work once the layout is set.
- **Guidance caching.** Under classifier-free guidance every image runs twice, with its
  prompt and without. :class:`CachedGuidance` runs the unconditional twins on some steps
  only and reuses the guidance direction between (FasterCache, Lv et al. 2024).

Each image of the batch decides for itself (with its unconditional twin: guidance magnifies
their difference, so both are served or neither). An image recomputes the level when

- it is a new run (the flow time went up, or the level's input has a new shape: another
  stage of a coarse-to-fine run, another batch), or the time is above ``start`` (the early,
  high-noise steps that lay out the picture). One change of shape is no new run: a batch
  that halves where a guidance interval ends keeps the first half of what was stored, the
  conditional rows of :func:`~fractalflow.flow.samplers.guided_velocity`'s
  ``[conditional; unconditional]`` batch, which alone run from there on;
- the schedule says so (at most ``every - 1`` reuses in a row);
- or its input to the level has drifted from the one its stored output was computed from by
  more than ``drift`` (relative L2, the larger of its two rows'): a per-input decision, so an
  image whose input moves a lot is never served stale features, and the others of its batch
  are not recomputed for it.

The level runs on the rows that recompute only; when all do, on the batch as it is.

    with AdaptiveDepth(model, CacheSettings(every=3, start=0.8)) as adaptive:
        images = sample(...)
    adaptive.report()  # rows: {'computed': 9, 'reused': 11, 'blocks_run': ..., 'blocks_full': ...}

Outside the ``with`` block the model is unchanged (its modules are put back, the hook removed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fractalflow.config import JsonConfig


@dataclass(frozen=True)
class CacheSettings(JsonConfig):
    """Which level to cache (``depth`` 1: the inner level of the outermost one, the larger of
    the inner levels; 0: none); at most ``every - 1`` reuses between two computations
    (``every`` 1: always compute); reuse only at flow times ``t <= start`` (1: from the second
    step on); ``drift``: recompute when the level's input changed by more than this relative
    L2 since it was last computed (None: the schedule alone decides); ``extrapolate``: serve
    ``y2 + (y2 - y1) (t - t2) / (t2 - t1)`` from the last two computations instead of ``y2``;
    ``freeze_cross``: below this flow time, cross-attention layers serve their last output
    (None: never); ``guidance_every``: in a guided batch, run the unconditional twins on every
    ``guidance_every``-th step only and reuse the guidance direction between, at flow times
    ``t <= guidance_start`` (:class:`CachedGuidance`; 1: every step); ``step_fraction``: run
    this fraction of the asked sampling steps (at least 2, on the same warped time grid; the
    pipeline applies it, AdaptiveDepth does not: the plain way to spend less, which a
    calibrated policy may prefer to caching); ``refine_steps``: the scales after the first of a
    coarse-to-fine run take at most this many steps (None: as planned; the pipeline applies it
    too)."""

    depth: int = 1
    every: int = 2
    start: float = 1.0
    drift: float | None = None
    extrapolate: bool = False
    freeze_cross: float | None = None
    guidance_every: int = 1
    guidance_start: float = 1.0
    step_fraction: float = 1.0
    refine_steps: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.depth < 0 or self.every < 1:
            problems.append(f"depth ({self.depth}) must be >= 0 and every ({self.every}) >= 1")
        if self.guidance_every < 1:
            problems.append(f"guidance_every ({self.guidance_every}) must be >= 1")
        if not 0 < self.step_fraction <= 1:
            problems.append(f"step_fraction ({self.step_fraction}) must be above 0 and at most 1")
        if self.refine_steps is not None and self.refine_steps < 1:
            problems.append(f"refine_steps ({self.refine_steps}) must be >= 1 or None")
        if not 0 <= self.start <= 1 or not 0 <= self.guidance_start <= 1:
            problems.append(f"start ({self.start}) and guidance_start ({self.guidance_start}) must be from 0 to 1")
        if not (self.drift is None or self.drift >= 0):
            problems.append(f"drift ({self.drift}) must be >= 0 or None")
        if not (self.freeze_cross is None or 0 <= self.freeze_cross <= 1):
            problems.append(f"freeze_cross ({self.freeze_cross}) must be from 0 to 1 or None")
        if problems:
            raise ValueError("invalid CacheSettings: " + "; ".join(problems))


class StepClock:
    """The flow time of the forward pass running now (None when the batch's times differ),
    whether it started a new run (the time went up since the previous pass), and whether its
    batch is images and then their unconditional twins (``drop`` false for the first half of
    the rows and true for the second: :func:`~fractalflow.flow.samplers.guided_velocity`'s)."""

    def __init__(self):
        self.time: float | None = None
        self.new_run = True
        self.twins = False
        self.twins_skipped = False  # this pass runs the images of a twin batch only (CachedGuidance)
        self.forwards = self.rows = 0  # forward passes, and the batch rows they ran

    def tick(self, t: Tensor, drop: Tensor | None = None) -> None:
        first = float(t.flatten()[0])
        time = first if bool((t == first).all()) else None
        self.new_run = time is None or self.time is None or time > self.time
        self.time = time
        rows = t.shape[0]
        self.twins = (
            drop is not None
            and rows % 2 == 0
            and rows > 0
            and bool((drop == (torch.arange(rows, device=drop.device) >= rows // 2)).all())
        )
        self.forwards += 1
        self.rows += rows

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward pre-hook on the model (``model(x, t, cond, drop=None)``)."""
        self.tick(args[1], kwargs.get("drop", args[3] if len(args) > 3 else None))


def count_blocks(level: nn.Module) -> int:
    """Transformer blocks in an hourglass level and all its inner levels."""
    blocks = 0
    while level is not None:
        blocks += len(level.down_blocks) + len(level.up_blocks or ())
        level = getattr(level, "inner", None)
    return blocks


def halved(stored: Tensor, x: Tensor) -> bool:
    """Whether ``x`` is the first half of the batch ``stored`` was (the batch halved where
    guidance stopped: the conditional rows go on)."""
    return stored.shape[0] == 2 * x.shape[0] and stored.shape[1:] == x.shape[1:]


class CachedLevel(nn.Module):
    """Stands in for ``level`` while caching: computes it, or serves its stored output, row by
    row. Each row of the batch (an image, or its unconditional twin) keeps its own stored output,
    flow times and reuse count, so a row whose input drifted recomputes alone: the level runs on
    those rows only, and the others are served. ``computed`` and ``reused`` count rows,
    ``skipped_passes`` the passes that served every row."""

    def __init__(self, level: nn.Module, settings: CacheSettings, clock: StepClock):
        super().__init__()
        self.level, self.settings, self.clock = level, settings, clock
        self.input: Tensor | None = None  # (B, ...): each row's input when it last computed
        self.last: Tensor | None = None  # (B, ...): each row's last computed output
        self.previous: Tensor | None = None  # (B, ...): the computation before it (the last itself at first)
        self.last_time: Tensor | None = None  # (B,) float64 flow times of the two
        self.previous_time: Tensor | None = None
        self.reuses: Tensor | None = None  # (B,) reuses in a row since each row last computed
        self.computed = self.reused = 0
        self.skipped_passes = 0  # passes in which the level did not run at all

    def drifted(self, x: Tensor) -> Tensor:
        """(B,) bool: the rows whose input changed by more than ``drift`` since they computed."""
        if self.settings.drift is None:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        before = self.input[: x.shape[0]]
        change = (x - before).flatten(1).norm(dim=1) / before.flatten(1).norm(dim=1).clamp_min(1e-8)
        return change > self.settings.drift

    def forward(self, x: Tensor, *context) -> Tensor:
        batch = x.shape[0]
        if self.last is not None and not self.clock.new_run and not self.clock.twins_skipped and halved(self.input, x):
            self.keep_first(batch)
        if self.clock.new_run or (self.last is not None and not self.covers(x)):
            self.last = None
        if self.last is None:
            return self.compute_all(x, context)
        if self.clock.time > self.settings.start:
            fresh = torch.ones(batch, dtype=torch.bool, device=x.device)
        else:
            fresh = (self.reuses[:batch] >= self.settings.every - 1) | self.drifted(x)  # (B,) bool
        if self.clock.twins and not self.clock.twins_skipped:  # an image and its twin decide together: guidance
            fresh = fresh.view(2, -1).any(dim=0).repeat(2)  # magnifies their difference, so serve both or neither
        rows = fresh.nonzero().flatten()
        stored = self.input.shape[0]  # batch, or 2 * batch while the twins are skipped
        if len(rows) == batch == stored:
            return self.compute_all(x, context)
        served = self.stored_output()[:batch]
        self.reuses = torch.cat([torch.where(fresh, 0, self.reuses[:batch] + 1), self.reuses[batch:]])
        self.reused += batch - len(rows)
        if not len(rows):
            self.skipped_passes += 1
            return served
        output = self.level(x[rows], *(rows_of(part, rows, batch) for part in context))
        self.previous = self.previous.index_copy(0, rows, self.last[rows])
        self.previous_time = self.previous_time.index_copy(0, rows, self.last_time[rows])
        self.last = self.last.index_copy(0, rows, output)
        self.last_time = self.last_time.index_fill(0, rows, self.clock.time)
        self.input = self.input.index_copy(0, rows, x[rows])
        self.computed += len(rows)
        return served.index_copy(0, rows, output)

    def covers(self, x: Tensor) -> bool:
        """Whether the stored rows are ``x``'s (or, while the twins are skipped, ``x``'s and theirs)."""
        rows = (x.shape[0], 2 * x.shape[0]) if self.clock.twins_skipped else (x.shape[0],)
        return x.shape[1:] == self.input.shape[1:] and self.input.shape[0] in rows

    def compute_all(self, x: Tensor, context: tuple) -> Tensor:
        output = self.level(x, *context)
        now = math.nan if self.clock.time is None else self.clock.time  # None: a batch at mixed times
        time = torch.full((x.shape[0],), now, dtype=torch.float64, device=x.device)
        if self.last is None:
            self.previous, self.previous_time = output, time
        else:
            self.previous, self.previous_time = self.last, self.last_time
        self.input, self.last, self.last_time = x, output, time
        self.reuses = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.computed += x.shape[0]
        return output

    def keep_first(self, batch: int) -> None:
        for name in ("input", "last", "previous", "last_time", "previous_time", "reuses"):
            setattr(self, name, getattr(self, name)[:batch])

    def stored_output(self) -> Tensor:
        """Each row's last output, or with ``extrapolate`` its line through the last two in flow
        time (a row computed once only is served as it is)."""
        if not self.settings.extrapolate:
            return self.last
        span = self.last_time - self.previous_time
        ratio = torch.where(span == 0, 0.0, (self.clock.time - self.last_time) / span.where(span != 0, 1.0))
        if not bool(ratio.any()):
            return self.last
        ratio = ratio.to(self.last.dtype).view(-1, *[1] * (self.last.dim() - 1))
        return self.last + (self.last - self.previous) * ratio


def rows_of(part: object, rows: Tensor, batch: int) -> object:
    """``part[rows]`` for a tensor with one row per image of the batch; anything else as it is."""
    if isinstance(part, Tensor) and part.dim() and part.shape[0] == batch:
        return part[rows]
    return part


class FrozenCrossAttention(nn.Module):
    """Stands in for a cross-attention layer: below flow time ``below`` it serves the output
    it computed last (in this run, for inputs of this shape)."""

    def __init__(self, cross: nn.Module, below: float, clock: StepClock):
        super().__init__()
        self.cross, self.below, self.clock = cross, below, clock
        self.output: Tensor | None = None
        self.frozen = self.frozen_passes = 0  # rows and passes served

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor | None) -> Tensor:
        batch = x.shape[0]
        if self.clock.new_run:
            self.output = None
        skipping = self.output is not None and self.clock.twins_skipped and halved(self.output, x)  # keep the twins'
        if self.output is not None and not skipping and halved(self.output, x):
            self.output = self.output[:batch]
        if self.output is not None and not skipping and self.output.shape != x.shape:
            self.output = None
        if self.output is not None and self.clock.time <= self.below:
            self.frozen += batch
            self.frozen_passes += 1
            return self.output[:batch]
        output = self.cross(x, tokens, mask)
        self.output = torch.cat([output, self.output[batch:]]) if skipping else output
        return output


class CachedGuidance:
    """Stands in for the model's ``forward`` while caching guidance: in a batch of images and
    their unconditional twins, the twins run on every ``guidance_every``-th step only (and on
    a new run's first step, and above flow time ``guidance_start``). On the steps between,
    the images run alone and each twin's velocity is its image's minus the guidance direction
    ``d`` (conditional minus unconditional velocity) of the last step that ran both, or with
    ``extrapolate`` the line through the last two such directions in flow time. So guidance
    ``v_u + g (v_c - v_u)`` becomes ``v_c + (g - 1) d`` (FasterCache's CFG cache, Lv et al.
    2024). The direction changes more slowly than either velocity, but ``g - 1`` magnifies
    its error: measured, it costs prompt alignment sooner than level caching does."""

    def __init__(self, forward, settings: CacheSettings, clock: StepClock):
        self.forward, self.settings, self.clock = forward, settings, clock
        self.direction: Tensor | None = None  # (B, C, H, W): v_c - v_u of the last step that ran both
        self.before: tuple[float, Tensor] | None = None  # (time, direction) of the step that ran both before it
        self.time = 0.0
        self.since = 0  # steps the twins skipped since
        self.skipped = 0  # twin rows skipped

    def __call__(self, x: Tensor, t: Tensor, cond, drop: Tensor | None = None) -> Tensor:
        half = x.shape[0] // 2
        if not self.clock.twins:
            return self.forward(x, t, cond, drop)
        if self.clock.new_run or self.direction is None or self.direction.shape[0] != half:
            self.direction = self.before = None
        if (
            self.direction is None
            or self.since >= self.settings.guidance_every - 1
            or self.clock.time > self.settings.guidance_start
        ):
            velocity = self.forward(x, t, cond, drop)
            conditional, unconditional = velocity.chunk(2)
            if self.direction is not None:
                self.before = (self.time, self.direction)
            self.direction, self.time, self.since = conditional - unconditional, self.clock.time, 0
            return velocity
        images = torch.arange(half, device=x.device)
        self.clock.twins_skipped = True
        try:
            conditional = self.forward(x[:half], t[:half], cond.index(images), drop[:half])
        finally:
            self.clock.twins_skipped = False
        self.since += 1
        self.skipped += half
        return torch.cat([conditional, conditional - self.served_direction()])

    def served_direction(self) -> Tensor:
        if not self.settings.extrapolate or self.before is None:
            return self.direction
        time, direction = self.before
        return self.direction + (self.direction - direction) * ((self.clock.time - self.time) / (self.time - time))


class AdaptiveDepth:
    """Context manager: step caching of ``model``'s level at ``settings.depth`` and
    cross-attention freezing (see the module docstring). ``report()`` says how often the level
    was computed and reused and how many transformer blocks ran of those a full computation
    runs (a block whose cross-attention was frozen counts as run), all summed over the rows
    of each batch: a guided image counts twice (its unconditional twin is a row)."""

    def __init__(self, model: nn.Module, settings: CacheSettings):
        levels = model.config.num_levels
        if settings.depth >= levels:
            raise ValueError(f"CacheSettings.depth={settings.depth}: this model's inner levels are 1..{levels - 1}")
        self.model, self.settings, self.clock = model, settings, StepClock()
        self.swaps: list[tuple[nn.Module, str, nn.Module]] = []  # (owner, attribute, stand-in)
        self.cached: CachedLevel | None = None
        self.cached_blocks = 0
        if settings.depth:
            parent = model.body  # the level whose inner level is cached
            for _ in range(settings.depth - 1):
                parent = parent.inner
            self.cached = CachedLevel(parent.inner, settings, self.clock)
            self.cached_blocks = count_blocks(parent.inner)
            self.swaps.append((parent, "inner", self.cached))
        if settings.freeze_cross is not None:
            for block in model.modules():
                if getattr(block, "cross", None) is not None:
                    frozen = FrozenCrossAttention(block.cross, settings.freeze_cross, self.clock)
                    self.swaps.append((block, "cross", frozen))
        self.guidance = CachedGuidance(model.forward, settings, self.clock)
        self.blocks_per_forward = count_blocks(model.body)
        self.originals: list[nn.Module] = []
        self.hook = None
        self.served_before = 0
        self.size: int | None = None  # the image side of the pass running now
        self.before_size: dict[str, int] = {}  # report() when passes at this size began
        self.sizes: dict[int, dict[str, int]] = {}  # each earlier size's part of report()

    def __enter__(self) -> AdaptiveDepth:
        self.originals = [getattr(owner, name) for owner, name, _ in self.swaps]
        for owner, name, stand_in in self.swaps:
            setattr(owner, name, stand_in)
        caching_guidance = self.settings.guidance_every > 1
        if caching_guidance:
            self.model.forward = self.guidance  # an instance attribute: __call__ and its hooks run it
        # with nothing swapped in (off), only count the passes: reading t would sync a GPU every pass
        self.count = self.clock.hook if self.swaps or caching_guidance else self.count_forward
        self.hook = self.model.register_forward_pre_hook(self.before_forward, with_kwargs=True)
        return self

    def before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        size = args[0].shape[-1]
        if size != self.size:  # a coarse-to-fine run's next scale: close the last one's share
            now = self.report()
            if self.size is not None:
                self.sizes[self.size] = self.size_share(now)
            self.size, self.before_size = size, now
        self.count(module, args, kwargs)

    def size_share(self, now: dict[str, int]) -> dict[str, int]:
        """The current size's counts: what it held before plus what ran since it last began."""
        before = self.sizes.get(self.size, {})
        return {key: before.get(key, 0) + value - self.before_size[key] for key, value in now.items()}

    def count_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.clock.forwards += 1
        self.clock.rows += args[0].shape[0]

    def __exit__(self, *exc) -> None:
        for (owner, name, _), original in zip(self.swaps, self.originals):
            setattr(owner, name, original)
        if self.settings.guidance_every > 1:
            del self.model.forward  # the class's forward again
        self.hook.remove()

    def exact_since_last_asked(self) -> bool:
        """Whether every forward pass since the previous call ran in full (no level reused, no
        cross-attention frozen): the sampler's early stopping trusts only such steps."""
        served = self.served()
        exact, self.served_before = served == self.served_before, served
        return exact

    def served(self) -> int:
        """Level outputs, cross-attention outputs and twin velocities served from store so far."""
        frozen = sum(layer.frozen for layer in self.frozen_layers())
        return (self.cached.reused if self.cached else 0) + frozen + self.guidance.skipped

    def frozen_layers(self) -> list[FrozenCrossAttention]:
        return [stand_in for _, _, stand_in in self.swaps if isinstance(stand_in, FrozenCrossAttention)]

    def report(self) -> dict[str, int]:
        """``forwards``: the forward passes run; ``rows``: the batch rows full compute runs in them;
        ``computed``/``reused``: rows that computed or were served the cached level, and
        ``level_skips`` the passes in which it did not run at all; ``cross_frozen``:
        cross-attention outputs served (rows, summed over layers), ``cross_skips`` the layers'
        passes so served; ``twins_skipped``: unconditional rows not run (their velocity from the
        cached guidance)."""
        rows, skipped, frozen_layers = self.clock.rows, self.guidance.skipped, self.frozen_layers()
        full = rows * self.blocks_per_forward
        computed, reused = (self.cached.computed, self.cached.reused) if self.cached else (rows - skipped, 0)
        return {
            "forwards": self.clock.forwards,
            "rows": rows,
            "computed": computed,
            "reused": reused,
            "level_skips": self.cached.skipped_passes if self.cached else 0,
            "cross_frozen": sum(layer.frozen for layer in frozen_layers),
            "cross_skips": sum(layer.frozen_passes for layer in frozen_layers),
            "twins_skipped": skipped,
            "blocks_run": full - reused * self.cached_blocks - skipped * self.blocks_per_forward,
            "blocks_full": full,
        }

    def report_by_size(self) -> dict[int, dict[str, int]]:
        """:meth:`report` split by the image side the passes ran at (a coarse-to-fine run's
        scales), smallest first: each size's counts sum to the report's."""
        sizes = dict(self.sizes)
        if self.size is not None:
            sizes[self.size] = self.size_share(self.report())
        return dict(sorted(sizes.items()))


OFF = CacheSettings(depth=0)  # counts the blocks, changes nothing
