"""The generative process: rectified-flow objective, timestep sampling, samplers, guidance."""

from fractalflow.flow.objective import interpolate, logit_normal_timesteps, rectified_flow_loss
from fractalflow.flow.samplers import (
    SAMPLERS,
    AdamsBashforth2,
    SamplerStep,
    StepState,
    euler_step,
    get_sampler,
    guided_velocity,
    heun_step,
    new_run,
    sample,
    sample_ab2,
    sample_euler,
    sample_heun,
    time_grid,
)

__all__ = [
    "AdamsBashforth2",
    "SAMPLERS",
    "SamplerStep",
    "StepState",
    "euler_step",
    "get_sampler",
    "guided_velocity",
    "heun_step",
    "interpolate",
    "logit_normal_timesteps",
    "new_run",
    "rectified_flow_loss",
    "sample",
    "sample_ab2",
    "sample_euler",
    "sample_heun",
    "time_grid",
]
