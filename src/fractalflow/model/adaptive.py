"""AdaptiveDepth: spend a forward pass's compute only where a step needs it.

Two savings, both across sampling steps:

- **Step caching of an inner level.** An inner level of the hourglass works on the coarsest
  tokens, and its output changes slowly from one step to the next. The chosen level computes
  its output on some steps and, on the others, serves the stored one (DeepCache, Ma et al.
  2024; FORA, Selvaraju et al. 2024) or a first-order extrapolation of its last two
  computations in flow time (TaylorSeer, Liu et al. 2025).
- **Cross-attention freezing.** Below a flow time, each cross-attention layer serves the
  output it computed on its last step above it (TGATE, Zhang et al. 2024): the text has
  done its work once the layout is set.

A step recomputes the level when

- it is a new run (the flow time went up, or the level's input has a new shape: another
  stage of a coarse-to-fine run, another batch), or the time is above ``start`` (the early,
  high-noise steps that lay out the picture). One change of shape is no new run: a batch
  that halves where a guidance interval ends keeps the first half of what was stored, the
  conditional rows of :func:`~fractalflow.flow.samplers.guided_velocity`'s
  ``[conditional; unconditional]`` batch, which alone run from there on;
- the schedule says so (at most ``every - 1`` reuses in a row);
- or the level's input has drifted from the one its stored output was computed from by
  more than ``drift`` (relative L2, the batch's largest change): a per-input decision, so a
  step whose input moves a lot is never served stale features.

    with AdaptiveDepth(model, CacheSettings(every=3, start=0.8)) as adaptive:
        images = sample(...)
    adaptive.report()  # {'computed': 9, 'reused': 11, 'blocks_run': ..., 'blocks_full': ...}

Outside the ``with`` block the model is unchanged (its modules are put back, the hook removed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from fractalflow.config import JsonConfig, read_json_object


@dataclass(frozen=True)
class CacheSettings(JsonConfig):
    """Which level to cache (``depth`` 1: the inner level of the outermost one, the larger of
    the inner levels; 0: none); at most ``every - 1`` reuses between two computations
    (``every`` 1: always compute); reuse only at flow times ``t <= start`` (1: from the second
    step on); ``drift``: recompute when the level's input changed by more than this relative
    L2 since it was last computed (None: the schedule alone decides); ``extrapolate``: serve
    ``y2 + (y2 - y1) (t - t2) / (t2 - t1)`` from the last two computations instead of ``y2``;
    ``freeze_cross``: below this flow time, cross-attention layers serve their last output
    (None: never)."""

    depth: int = 1
    every: int = 2
    start: float = 1.0
    drift: float | None = None
    extrapolate: bool = False
    freeze_cross: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.depth < 0 or self.every < 1:
            problems.append(f"depth ({self.depth}) must be >= 0 and every ({self.every}) >= 1")
        if not 0 <= self.start <= 1:
            problems.append(f"start ({self.start}) must be from 0 to 1")
        if not (self.drift is None or self.drift >= 0):
            problems.append(f"drift ({self.drift}) must be >= 0 or None")
        if not (self.freeze_cross is None or 0 <= self.freeze_cross <= 1):
            problems.append(f"freeze_cross ({self.freeze_cross}) must be from 0 to 1 or None")
        if problems:
            raise ValueError("invalid CacheSettings: " + "; ".join(problems))


class StepClock:
    """The flow time of the forward pass running now (None when the batch's times differ),
    and whether it started a new run (the time went up since the previous pass)."""

    def __init__(self):
        self.time: float | None = None
        self.new_run = True
        self.forwards = 0

    def tick(self, t: Tensor) -> None:
        first = float(t.flatten()[0])
        time = first if bool((t == first).all()) else None
        self.new_run = time is None or self.time is None or time > self.time
        self.time = time
        self.forwards += 1


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
    """Stands in for ``level`` while caching: computes it, or serves its stored output."""

    def __init__(self, level: nn.Module, settings: CacheSettings, clock: StepClock):
        super().__init__()
        self.level, self.settings, self.clock = level, settings, clock
        self.input: Tensor | None = None
        self.history: list[tuple[float, Tensor]] = []  # (time, output) of the last two computations
        self.reuses_in_a_row = 0
        self.computed = self.reused = 0

    def drifted(self, x: Tensor) -> bool:
        if self.settings.drift is None:
            return False
        change = (x - self.input).flatten(1).norm(dim=1) / self.input.flatten(1).norm(dim=1).clamp_min(1e-8)
        return bool(change.max() > self.settings.drift)

    def forward(self, x: Tensor, *context) -> Tensor:
        if self.history and not self.clock.new_run and halved(self.input, x):
            batch = x.shape[0]
            self.input = self.input[:batch]
            self.history = [(time, output[:batch]) for time, output in self.history]
        if self.clock.new_run or (self.history and x.shape != self.input.shape):
            self.history = []
        fresh = (
            not self.history
            or self.clock.time > self.settings.start
            or self.reuses_in_a_row >= self.settings.every - 1
            or self.drifted(x)
        )
        if not fresh:
            self.reuses_in_a_row += 1
            self.reused += 1
            return self.stored_output()
        output = self.level(x, *context)
        self.input, self.history = x, [*self.history[-1:], (self.clock.time, output)]
        self.reuses_in_a_row = 0
        self.computed += 1
        return output

    def stored_output(self) -> Tensor:
        last_time, last = self.history[-1]
        if not self.settings.extrapolate or len(self.history) < 2 or self.history[0][0] == last_time:
            return last
        first_time, first = self.history[0]
        return last + (last - first) * ((self.clock.time - last_time) / (last_time - first_time))


class FrozenCrossAttention(nn.Module):
    """Stands in for a cross-attention layer: below flow time ``below`` it serves the output
    it computed last (in this run, for inputs of this shape)."""

    def __init__(self, cross: nn.Module, below: float, clock: StepClock):
        super().__init__()
        self.cross, self.below, self.clock = cross, below, clock
        self.output: Tensor | None = None
        self.frozen = 0

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor | None) -> Tensor:
        if self.output is not None and not self.clock.new_run and halved(self.output, x):
            self.output = self.output[: x.shape[0]]
        if self.clock.new_run or (self.output is not None and self.output.shape != x.shape):
            self.output = None
        if self.output is not None and self.clock.time <= self.below:
            self.frozen += 1
            return self.output
        self.output = self.cross(x, tokens, mask)
        return self.output


class AdaptiveDepth:
    """Context manager: step caching of ``model``'s level at ``settings.depth`` and
    cross-attention freezing (see the module docstring). ``report()`` says how often the level
    was computed and reused and how many transformer blocks ran of those a full computation
    runs (a block whose cross-attention was frozen counts as run)."""

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
        self.blocks_per_forward = count_blocks(model.body)
        self.originals: list[nn.Module] = []
        self.hook = None
        self.served_before = 0

    def __enter__(self) -> AdaptiveDepth:
        self.originals = [getattr(owner, name) for owner, name, _ in self.swaps]
        for owner, name, stand_in in self.swaps:
            setattr(owner, name, stand_in)
        # with nothing swapped in (off), only count the passes: reading t would sync a GPU every pass
        count = (lambda module, args: self.clock.tick(args[1])) if self.swaps else self.count_forward
        self.hook = self.model.register_forward_pre_hook(count)
        return self

    def count_forward(self, module: nn.Module, args: tuple) -> None:
        self.clock.forwards += 1

    def __exit__(self, *exc) -> None:
        for (owner, name, _), original in zip(self.swaps, self.originals):
            setattr(owner, name, original)
        self.hook.remove()

    def exact_since_last_asked(self) -> bool:
        """Whether every forward pass since the previous call ran in full (no level reused, no
        cross-attention frozen): the sampler's early stopping trusts only such steps."""
        served = self.served()
        exact, self.served_before = served == self.served_before, served
        return exact

    def served(self) -> int:
        """Level outputs and cross-attention outputs served from store so far."""
        return (self.cached.reused if self.cached else 0) + self.frozen()

    def frozen(self) -> int:
        return sum(stand_in.frozen for _, _, stand_in in self.swaps if isinstance(stand_in, FrozenCrossAttention))

    def report(self) -> dict[str, int]:
        full = self.clock.forwards * self.blocks_per_forward
        computed, reused = (self.cached.computed, self.cached.reused) if self.cached else (self.clock.forwards, 0)
        return {
            "computed": computed,
            "reused": reused,
            "cross_frozen": self.frozen(),
            "blocks_run": full - reused * self.cached_blocks,
            "blocks_full": full,
        }


ADAPTIVE_FILE = "adaptive.json"  # next to a model's weights: its calibrated policies
MAX_SPEEDUP = 8.0
OFF = CacheSettings(depth=0)  # counts the blocks, changes nothing


@dataclass(frozen=True)
class AdaptivePolicies:
    """A model's calibrated step-caching policies: the :class:`CacheSettings` that reached
    each target speed-up at the least quality loss on training captions, and the target
    ``adaptive="auto"`` uses (None: auto stays off). Written by ``fractalflow calibrate``."""

    policies: dict[float, CacheSettings]
    auto: float | None = None

    def __post_init__(self) -> None:
        if self.auto is not None and self.auto not in self.policies:
            raise ValueError(f"auto={self.auto} is none of the calibrated targets {sorted(self.policies)}")

    @classmethod
    def from_dict(cls, values: dict) -> AdaptivePolicies:
        rows = values.get("policies")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "target" in r for r in rows):
            raise ValueError(f"{ADAPTIVE_FILE}: 'policies' must be a list of {{target, settings}} objects")
        policies = {float(r["target"]): CacheSettings.from_dict(r["settings"]) for r in rows}
        return cls(policies, values.get("auto"))

    def to_dict(self) -> dict:
        rows = [{"target": target, "settings": self.policies[target].to_dict()} for target in sorted(self.policies)]
        return {"auto": self.auto, "policies": rows}

    @classmethod
    def read(cls, folder: str | Path) -> AdaptivePolicies | None:
        """The policies in ``folder/adaptive.json``; None when the model was never calibrated."""
        path = Path(folder) / ADAPTIVE_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(read_json_object(path))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    def choose(self, adaptive: str | float) -> tuple[CacheSettings, float | None]:
        """The settings for ``adaptive`` ("auto" or a speed-up) and the calibrated target they
        reach: the largest target not above the asked speed-up (off below the smallest)."""
        if adaptive == "auto":
            return (OFF, None) if self.auto is None else (self.policies[self.auto], self.auto)
        reachable = [target for target in self.policies if target <= adaptive]
        if not reachable:
            return OFF, None
        return self.policies[max(reachable)], max(reachable)


def check_adaptive(adaptive: object) -> None:
    """Refuse anything but "off", "auto", a speed-up from 1 to MAX_SPEEDUP or CacheSettings."""
    if isinstance(adaptive, CacheSettings) or adaptive in ("off", "auto"):
        return
    if isinstance(adaptive, (int, float)) and not isinstance(adaptive, bool) and 1 <= adaptive <= MAX_SPEEDUP:
        return
    raise ValueError(
        f"adaptive={adaptive!r}: allowed are 'off', 'auto', a speed-up from 1 to {MAX_SPEEDUP:g}, or CacheSettings"
    )
