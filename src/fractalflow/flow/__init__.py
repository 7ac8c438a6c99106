"""The generative process: rectified-flow objective, timestep sampling, samplers, guidance."""

from fractalflow.flow.objective import interpolate, logit_normal_timesteps, rectified_flow_loss
from fractalflow.flow.samplers import (
    SAMPLERS,
    SamplerStep,
    StepState,
    euler_step,
    get_sampler,
    guided_velocity,
    heun_step,
    sample,
    sample_euler,
    sample_heun,
    time_grid,
)

__all__ = [
    "SAMPLERS",
    "SamplerStep",
    "StepState",
    "euler_step",
    "get_sampler",
    "guided_velocity",
    "heun_step",
    "interpolate",
    "logit_normal_timesteps",
    "rectified_flow_loss",
    "sample",
    "sample_euler",
    "sample_heun",
    "time_grid",
]
