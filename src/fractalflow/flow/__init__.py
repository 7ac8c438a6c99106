"""The generative process: rectified-flow objective, timestep sampling, samplers, guidance."""

from fractalflow.flow.objective import interpolate, logit_normal_timesteps, rectified_flow_loss
from fractalflow.flow.samplers import (
    SAMPLERS,
    StepState,
    get_sampler,
    guided_velocity,
    sample_euler,
    sample_heun,
    time_grid,
)

__all__ = [
    "SAMPLERS",
    "StepState",
    "get_sampler",
    "guided_velocity",
    "interpolate",
    "logit_normal_timesteps",
    "rectified_flow_loss",
    "sample_euler",
    "sample_heun",
    "time_grid",
]
