"""Samplers for rectified flow: integrate dx/dt = v(x, t) from noise (t = 1) to data (t = 0).

A sampler is one step function, ``step(velocity, x, t, t_next) -> (x_next, x0_estimate)``
(:data:`SAMPLERS`); :func:`sample` is the one loop that drives any of them, for the plain
path and the coarse-to-fine refiner alike, as k-diffusion's samplers drive a denoiser. A
multistep sampler, which reuses the velocities of earlier steps, is registered as a class
whose instances are such step functions with their own history; the loops make one per run
(:func:`new_run`; per scale of a coarse-to-fine run). The callback gets a :class:`StepState`
after every step, with the current estimate of the clean image.
``sample_euler(velocity, x, times, callback)``, ``sample_heun`` and ``sample_ab2`` are the
loop with each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fractalflow.model.conditioning import Conditioning

Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StepState:
    """Where a sampler is after a step: ``x0_estimate`` is the predicted clean image."""

    step: int
    total: int
    t: float
    x: Tensor
    x0_estimate: Tensor


StepCallback = Callable[[StepState], None]


def time_grid(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> Tensor:
    """``steps + 1`` times from 1 to 0; ``shift > 1`` spends more steps at high noise (SD3)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: at least 1 sampling step is required")
    if shift <= 0:
        raise ValueError(f"shift={shift} must be > 0")
    t = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return shift * t / (1 + (shift - 1) * t)


def _batch_time(t: Tensor, x: Tensor) -> Tensor:
    return t.expand(x.shape[0]).to(x.device)


# one step of a sampler: (velocity, x at time t, t, t_next) -> (x at t_next, clean-image estimate)
SamplerStep = Callable[[Velocity, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def euler_step(velocity: Velocity, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
    """First-order Euler: one velocity evaluation."""
    v = velocity(x, _batch_time(t, x))
    return x + (t_next - t) * v, x - t * v


def heun_step(velocity: Velocity, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
    """Second-order Heun: Euler predictor, trapezoid corrector (two evaluations, one on the
    final step to t = 0)."""
    v = velocity(x, _batch_time(t, x))
    if t_next > 0:
        v_next = velocity(x + (t_next - t) * v, _batch_time(t_next, x))
        v = (v + v_next) / 2
    return x + (t_next - t) * v, x - t * v


class AdamsBashforth2:
    """Second-order Adams-Bashforth: one velocity evaluation per step, like Euler, plus the
    previous step's velocity to extrapolate the velocity across the step (k-diffusion's
    ``sample_lms`` at order 2, on the flow's time grid). With step sizes ``h`` (this one)
    and ``h_prev`` it moves along ``v + h / (2 h_prev) (v - v_prev)``; the first step of a
    run is Euler. An instance keeps the history of one run: make one per run (``new_run``).
    """

    def __init__(self) -> None:
        self.previous: tuple[Tensor, Tensor] | None = None  # the last step's velocity and step size

    def __call__(self, velocity: Velocity, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[Tensor, Tensor]:
        v = velocity(x, _batch_time(t, x))
        h = t_next - t
        moved = v
        if self.previous is not None:
            v_prev, h_prev = self.previous
            moved = v + h / (2 * h_prev) * (v - v_prev)
        self.previous = (v, h)
        return x + h * moved, x - t * v


def new_run(sampler: SamplerStep | type) -> SamplerStep:
    """The step function for one run of ``sampler``: a fresh instance of a multistep sampler
    class (its history starts empty), also behind a plugin, or a plain step function as it is."""
    from fractalflow.plugins import Plugin

    if isinstance(sampler, Plugin) and isinstance(sampler.function, type):
        return replace(sampler, function=sampler.function())
    return sampler() if isinstance(sampler, type) else sampler


def sample(
    step: SamplerStep | type, velocity: Velocity, x: Tensor, times: Tensor, callback: StepCallback | None = None
) -> Tensor:
    """The one sampling loop: ``step`` from ``times[0]`` down to ``times[-1]``, ``callback``
    after every step with the state before it and that step's clean-image estimate."""
    total, step = len(times) - 1, new_run(step)
    for i in range(total):
        x_next, x0 = step(velocity, x, times[i], times[i + 1])
        if callback is not None:
            callback(StepState(i, total, float(times[i]), x, x0))
        x = x_next
    return x


def sample_euler(velocity: Velocity, x: Tensor, times: Tensor, callback: StepCallback | None = None) -> Tensor:
    return sample(euler_step, velocity, x, times, callback)


def sample_heun(velocity: Velocity, x: Tensor, times: Tensor, callback: StepCallback | None = None) -> Tensor:
    return sample(heun_step, velocity, x, times, callback)


def sample_ab2(velocity: Velocity, x: Tensor, times: Tensor, callback: StepCallback | None = None) -> Tensor:
    return sample(AdamsBashforth2, velocity, x, times, callback)


# built-ins; more come as plugins. A class is a multistep sampler: one instance per run (new_run)
SAMPLERS: dict[str, SamplerStep | type] = {"euler": euler_step, "heun": heun_step, "ab2": AdamsBashforth2}


def get_sampler(name: str) -> SamplerStep | type:
    """The sampler called ``name``, a step function or a multistep sampler class (pass it to
    :func:`new_run` for each run): a built-in, or a sampler plugin (installed plugins are
    loaded only when a name is not a built-in's)."""
    if name in SAMPLERS:
        return SAMPLERS[name]
    from fractalflow.plugins import registry

    return registry().get("sampler", name)


def guidance_interval_problem(interval: object) -> str | None:
    """What is wrong with a guidance ``interval`` (two finite flow times ``low < high`` within
    [0, 1]), or None: the one rule the sampler and GenerationConfig's validation share."""
    if (
        not isinstance(interval, (tuple, list))
        or len(interval) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in interval)
        or not 0 <= interval[0] < interval[1] <= 1
    ):
        return "give low:high with 0 <= low < high <= 1"
    return None


def guided_velocity(
    model: torch.nn.Module,
    cond: Conditioning,
    guidance: float,
    interval: tuple[float, float] | None = None,
    partial: tuple[float, float] | None = None,
) -> Velocity:
    """Velocity of ``model`` under classifier-free guidance with scale ``guidance``.

    ``guidance == 1`` is the plain conditional model; otherwise conditional and
    unconditional predictions are made in one batch and extrapolated:
    ``v_uncond + guidance * (v_cond - v_uncond)``. With ``interval = (low, high)`` guidance
    applies only at flow times ``low <= t <= high`` and the conditional model alone runs
    elsewhere, one forward instead of two (Kynkäänniemi et al. 2024, "Applying guidance in a
    limited interval"). ``partial = (t, share)``: the step that starts at flow time ``t`` is
    guided with ``share`` of the guidance, ``1 + share (guidance - 1)``, inside the interval or
    not (:func:`~fractalflow.model.adaptive_policies.policy_guidance`).
    """
    if guidance < 0:
        raise ValueError(f"guidance={guidance} must be >= 0")
    if interval is not None and (problem := guidance_interval_problem(interval)):
        raise ValueError(f"guidance_interval={interval}: {problem}")
    if guidance == 1.0:
        return lambda x, t: model(x, t, cond)
    both = Conditioning.cat([cond, cond])

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        time, scale = float(t[0]), guidance
        if partial is not None and math.isclose(time, partial[0], abs_tol=1e-6):  # a GPU's grid may differ by an ulp
            scale = 1 + partial[1] * (guidance - 1)
        elif interval is not None and not interval[0] <= time <= interval[1]:
            return model(x, t, cond)
        batch = x.shape[0]
        drop = torch.arange(2 * batch, device=x.device) >= batch
        v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), both, drop=drop).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return velocity
