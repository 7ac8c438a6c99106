"""Rectified flow: the objective's path, time grids, samplers on a problem with a known answer."""

import math

import pytest
import torch

from fractalflow import Conditioning
from fractalflow.flow import (
    AdamsBashforth2,
    euler_step,
    guided_velocity,
    interpolate,
    logit_normal_timesteps,
    rectified_flow_loss,
    sample,
    sample_ab2,
    sample_euler,
    sample_heun,
    time_grid,
)

MODES = torch.tensor([[-4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [4.0, 4.0]])
SIGMA = 0.3


def mixture_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Exact rectified-flow velocity E[noise - x0 | x_t] for an equal-weight Gaussian mixture."""
    t = t[:, None]
    variance = (1 - t) ** 2 * SIGMA**2 + t**2
    centred = x[:, None, :] - (1 - t[:, None]) * MODES[None]
    log_weights = -(centred**2).sum(-1) / (2 * variance)
    weights = torch.softmax(log_weights, dim=1)[..., None]
    expected_noise = t[:, None] / variance[:, None] * centred
    expected_x0 = MODES[None] + (1 - t[:, None]) * SIGMA**2 / variance[:, None] * centred
    return (weights * (expected_noise - expected_x0)).sum(1)


@pytest.mark.parametrize("sampler,steps", [(sample_euler, 100), (sample_heun, 25), (sample_ab2, 50)])
def test_sampler_with_exact_velocity_lands_on_the_mixture(sampler, steps):
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    samples = sampler(mixture_velocity, noise, time_grid(steps))
    distances = torch.cdist(samples, MODES)
    nearest = distances.argmin(1)
    shares = torch.bincount(nearest, minlength=4).float() / len(samples)
    assert torch.all((shares - 0.25).abs() < 0.04), shares
    spread = (samples - MODES[nearest]).std(0)
    assert torch.all((spread - SIGMA).abs() < 0.1 * SIGMA), spread


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    exact = sample_heun(mixture_velocity, noise, time_grid(400))
    euler_error = (sample_euler(mixture_velocity, noise, time_grid(10)) - exact).norm(dim=1).mean()
    heun_error = (sample_heun(mixture_velocity, noise, time_grid(10)) - exact).norm(dim=1).mean()
    assert heun_error < 0.5 * euler_error


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_adams_bashforth_is_more_accurate_than_euler_at_the_same_evaluations(shift):
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    exact = sample_heun(mixture_velocity, noise, time_grid(400, shift))
    euler_error = (sample_euler(mixture_velocity, noise, time_grid(20, shift)) - exact).norm(dim=1).mean()
    ab2_error = (sample_ab2(mixture_velocity, noise, time_grid(20, shift)) - exact).norm(dim=1).mean()
    assert ab2_error < 0.5 * euler_error


def test_a_multistep_run_starts_with_an_euler_step_and_each_run_starts_afresh():
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    times = time_grid(6, 3.0)
    ab2 = AdamsBashforth2()
    first, euler = ab2(mixture_velocity, noise, times[0], times[1]), euler_step(mixture_velocity, noise, *times[:2])
    assert all(torch.equal(a, b) for a, b in zip(first, euler))
    second, _ = ab2(mixture_velocity, noise, times[1], times[2])
    assert not torch.equal(second, euler_step(mixture_velocity, noise, times[1], times[2])[0])  # history used
    calls = []

    def counted(x, t):
        calls.append(float(t[0]))
        return mixture_velocity(x, t)

    first_run = sample_ab2(counted, noise, times)
    assert torch.equal(sample_ab2(counted, noise, times), first_run)  # no history carried between runs
    assert len(calls) == 2 * 6  # one evaluation per step


def test_ab2_draws_the_numbers_the_browser_sampler_checks():
    """web/tests/sampler.test.ts holds the browser's ab2 to these numbers: the same sampler in both."""
    noise = torch.tensor([[1.5, 0.3, -0.7, 0.2]])
    out = sample_ab2(lambda x, t: x * (1 + t[:, None]) - 0.5, noise, time_grid(4, 3.0))
    expected = torch.tensor([[0.7464599609375, 0.3534974753856659, 0.026028692722320557, 0.3207505941390991]])
    torch.testing.assert_close(out, expected)


def test_last_x0_estimate_of_euler_is_the_sample_and_callback_runs_every_step():
    states = []
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    result = sample_euler(mixture_velocity, noise, time_grid(7), states.append)
    assert [s.step for s in states] == list(range(7)) and all(s.total == 7 for s in states)
    torch.testing.assert_close(states[-1].x0_estimate, result)


def test_a_new_sampler_is_one_step_function_driven_by_the_shared_loop():
    def midpoint_step(velocity, x, t, t_next):  # explicit midpoint (RK2): what a sampler plugin writes
        half = x + (t_next - t) / 2 * velocity(x, t.expand(len(x)))
        v = velocity(half, ((t + t_next) / 2).expand(len(x)))
        return x + (t_next - t) * v, x - t * velocity(x, t.expand(len(x)))

    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    exact = sample_heun(mixture_velocity, noise, time_grid(400))
    midpoint_error = (sample(midpoint_step, mixture_velocity, noise, time_grid(10)) - exact).norm(dim=1).mean()
    euler_error = (sample(euler_step, mixture_velocity, noise, time_grid(10)) - exact).norm(dim=1).mean()
    assert midpoint_error < 0.5 * euler_error
    assert torch.equal(sample(euler_step, mixture_velocity, noise, time_grid(5)),
                       sample_euler(mixture_velocity, noise, time_grid(5)))  # fmt: skip


def test_time_grid_runs_from_noise_to_data_and_shift_moves_steps_to_high_noise():
    grid = time_grid(10)
    assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid[1:] < grid[:-1])
    assert torch.all(time_grid(10, shift=3.0)[1:-1] > grid[1:-1])
    with pytest.raises(ValueError, match="at least 1"):
        time_grid(0)


def test_interpolation_endpoints_are_data_and_noise():
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(interpolate(x0, noise, torch.zeros(3)), x0)
    torch.testing.assert_close(interpolate(x0, noise, torch.ones(3)), noise)


def test_logit_normal_timesteps_are_inside_unit_interval_and_centred():
    t = logit_normal_timesteps(20000, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert t.min() > 0 and t.max() < 1
    assert abs(t.median().item() - 0.5) < 0.02


def test_loss_is_zero_for_a_model_that_knows_the_velocity():
    x0 = torch.randn(64, 2)

    def oracle(x_t, t, drop):  # with x0 known, v = (x_t - x0) / t
        return (x_t - x0) / t[:, None]

    loss = rectified_flow_loss(oracle, x0, torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8


class LabelScale(torch.nn.Module):
    """A velocity 'model' whose output is label + 1, or 0 for dropped samples."""

    def forward(self, x, t, cond, drop=None):
        value = cond.labels.float() + 1
        if drop is not None:
            value = torch.where(drop, torch.zeros_like(value), value)
        return value.view(-1, 1).expand_as(x)


@pytest.mark.parametrize("guidance", [0.0, 1.0, 2.5])
def test_guidance_extrapolates_from_unconditional_to_conditional(guidance):
    velocity = guided_velocity(LabelScale(), Conditioning(labels=torch.tensor([1, 3])), guidance)
    out = velocity(torch.zeros(2, 2), torch.full((2,), 0.5))
    expected = guidance * torch.tensor([2.0, 4.0])
    torch.testing.assert_close(out[:, 0], expected)
    assert not math.isnan(out.sum().item())


def test_guidance_interval_guides_only_inside_it_with_one_forward_outside():
    class Counting(LabelScale):
        batches: list[int] = []

        def forward(self, x, t, cond, drop=None):
            self.batches.append(x.shape[0])
            return super().forward(x, t, cond, drop)

    model = Counting()
    velocity = guided_velocity(model, Conditioning(labels=torch.tensor([1, 3])), 2.5, interval=(0.3, 0.8))
    x = torch.zeros(2, 2)
    guided, inside_edge = velocity(x, torch.full((2,), 0.5)), velocity(x, torch.full((2,), 0.3))
    plain_late, plain_early = velocity(x, torch.full((2,), 0.1)), velocity(x, torch.full((2,), 0.9))
    torch.testing.assert_close(guided[:, 0], torch.tensor([5.0, 10.0]))
    torch.testing.assert_close(inside_edge, guided)
    for plain in (plain_late, plain_early):  # the conditional model alone: label + 1
        torch.testing.assert_close(plain[:, 0], torch.tensor([2.0, 4.0]))
    assert model.batches == [4, 4, 2, 2]


@pytest.mark.parametrize("interval", [(0.5, 0.5), (0.6, 0.2), (-0.1, 1.0), (0.0, 1.5)])
def test_guidance_interval_must_be_increasing_within_zero_one(interval):
    with pytest.raises(ValueError, match="low < high"):
        guided_velocity(LabelScale(), Conditioning(labels=torch.tensor([1])), 2.0, interval=interval)
