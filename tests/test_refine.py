"""ProgressiveRefiner: coarse-to-fine sampling, previews, early stopping, and its use by the pipeline."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from fractalflow import FractalFlowPipeline
from fractalflow.flow import guided_velocity, sample_euler, time_grid
from fractalflow.flow.refine import (
    NAMED_RESOLUTIONS,
    ProgressiveRefiner,
    RefineSettings,
    default_scales,
    plan_stages,
    seeded_noise,
    stage_cost,
)
from fractalflow.model.conditioning import Conditioning

TARGET = torch.tensor([0.6, -0.2, 0.1])[:, None, None]  # a flat colour: the only image in the toy data


def exact_velocity(x, t):
    """The true velocity when every data image is TARGET: x_t = (1-t) c + t eps gives v = (x - c) / t."""
    return (x - TARGET) / t.view(-1, 1, 1, 1)


def drifting_velocity(x, t):
    """A velocity whose clean-image estimate x - t v = t keeps moving while t falls."""
    return (x - t.view(-1, 1, 1, 1)) / t.view(-1, 1, 1, 1)


@pytest.mark.parametrize("name,final", [("preview", 16), ("standard", 64), ("high", 128), ("ultra", 256)])
def test_named_resolutions_plan_scales_up_to_their_size(name, final):
    stages = plan_stages(RefineSettings(resolution=name, steps=20), native_size=64, multiple=8)
    assert [s.size for s in stages] == [size for size in (32, 64, 128, 256) if size < final] + [final]
    assert stages[0].start == 1.0 and all(s.start == 0.5 for s in stages[1:])  # 2x per scale: half re-noised
    assert [s.steps for s in stages] == [20] + [10] * (len(stages) - 1)


def test_default_scales_start_at_the_smallest_size_the_model_was_trained_at():
    assert default_scales(64) == (0.5, 1.0, 2.0, 4.0)  # sizes unknown: all of them
    assert default_scales(64, (32, 64)) == (0.5, 1.0, 2.0, 4.0)
    assert default_scales(64, (64,)) == (1.0, 2.0, 4.0)
    assert default_scales(64, (128,)) == (2.0, 4.0)


def test_pipeline_refines_from_the_smallest_trained_size(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    unknown = pipeline.generate("five", steps=4, seed=1, resolution="high")
    pipeline.model.config = dataclasses.replace(pipeline.config, trained_sizes=(16,))
    known = pipeline.generate("five", steps=4, seed=1, resolution="high")
    assert [s["size"] for s in unknown.metadata["stages"]] == [8, 16, 32]
    assert [s["size"] for s in known.metadata["stages"]] == [16, 32]


def test_upscale_strength_sets_the_start_of_scales_above_the_trained_size_only():
    stages = plan_stages(RefineSettings(resolution="ultra", steps=20, upscale_strength=0.25), 64, 8)
    assert [(s.size, s.start, s.steps) for s in stages] == [
        (32, 1.0, 20),
        (64, 0.5, 10),
        (128, 0.25, 5),
        (256, 0.25, 5),
    ]


def test_refine_steps_fix_the_steps_of_every_scale_after_the_first():
    stages = plan_stages(RefineSettings(resolution="ultra", steps=20, refine_steps=1), 64, 8)
    assert [(s.size, s.start, s.steps) for s in stages] == [(32, 1.0, 20), (64, 0.5, 1), (128, 0.5, 1), (256, 0.5, 1)]
    with pytest.raises(ValueError, match="refine_steps=0 must be >= 1"):
        RefineSettings(refine_steps=0)


def test_standard_refinement_costs_less_than_one_scale_at_equal_steps():
    progressive = plan_stages(RefineSettings(resolution="standard", steps=20), 64, 8)
    single = plan_stages(RefineSettings(resolution=64, scales=(1.0,), steps=20), 64, 8)
    assert len(single) == 1 and stage_cost(single) == 20
    assert [s.size for s in progressive] == [32, 64]
    assert stage_cost(progressive) == pytest.approx(20 / 4 + 10)


@pytest.mark.parametrize("sampler", ["euler", "ab2"])  # ab2's history starts again at each scale and size
@pytest.mark.parametrize("name", list(NAMED_RESOLUTIONS))
def test_refiner_lands_on_the_data_at_every_named_resolution(name, sampler):
    refiner = ProgressiveRefiner(RefineSettings(resolution=name, steps=8, sampler=sampler), native_size=32, multiple=4)
    images, report = refiner.run(exact_velocity, seeded_noise([0, 1], 3, "cpu"))
    size = report.stages[-1].size
    assert images.shape == (2, 3, size, size) and size == round(32 * NAMED_RESOLUTIONS[name])
    torch.testing.assert_close(images, TARGET.expand_as(images), atol=1e-4, rtol=0)


def test_preview_arrives_after_every_step_small_and_finite():
    events = []
    refiner = ProgressiveRefiner(RefineSettings(resolution="ultra", steps=6, preview_size=32), 32, 4)
    refiner.run(exact_velocity, seeded_noise([0], 3, "cpu"), events.append)
    assert [e.step for e in events] == list(range(1, refiner.total_steps + 1))
    assert all(e.total == refiner.total_steps for e in events)
    assert [e.stage for e in events][0] == "16px" and events[-1].stage == "128px"
    assert all(e.preview.shape[-1] <= 32 and torch.isfinite(e.preview).all() for e in events)


def test_early_stop_ends_each_scale_once_the_estimate_has_converged():
    settings = RefineSettings(resolution="standard", scales=(0.25, 0.5, 1.0), steps=20, early_stop=1e-3)
    images, report = ProgressiveRefiner(settings, 32, 4).run(exact_velocity, seeded_noise([0], 3, "cpu"))
    assert report.steps_run == [2, 2, 2] and report.steps_saved == 40 - 6
    torch.testing.assert_close(images, TARGET.expand_as(images), atol=1e-5, rtol=0)


def test_early_stop_does_not_fire_while_the_estimate_still_changes():
    settings = RefineSettings(resolution="standard", scales=(0.25, 0.5, 1.0), steps=20, early_stop=1e-3)
    _, report = ProgressiveRefiner(settings, 32, 4).run(drifting_velocity, seeded_noise([0], 3, "cpu"))
    assert report.steps_saved == 0


def test_early_stop_is_judged_between_exact_steps_only():
    # steps 1, 4, 7, ... are exact (computed in full); the estimate has converged after step 2,
    # so the first exact step with an exact one before it, step 4, ends the scale
    settings = RefineSettings(resolution="standard", scales=(1.0,), steps=20, early_stop=1e-3)
    asked = itertools.count()
    _, report = ProgressiveRefiner(settings, 32, 4).run(
        exact_velocity, seeded_noise([0], 3, "cpu"), exact=lambda: next(asked) % 3 == 0
    )
    assert report.steps_run == [4]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"resolution": "huge"}, "unknown resolution 'huge'; use one of \\['preview', 'standard'"),
        ({"scales": (1.0, 0.5)}, "strictly increasing"),
        ({"renoise": 1.5}, "renoise"),
        ({"upscale_strength": 0.0}, "upscale_strength=0.0 must be in \\(0, 1\\]"),
        ({"early_stop": -1.0}, "early_stop"),
        ({"time_shift": 0.0}, "time_shift=0.0 must be a finite number > 0"),
        ({"sampler": "ddim"}, "unknown sampler"),
    ],
)
def test_bad_refine_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RefineSettings(**kwargs)


def test_single_scale_pipeline_matches_a_plain_euler_run(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    result = pipeline.generate(["two", "five"], steps=6, seed=3, size=16)
    cond = Conditioning(labels=torch.tensor([2, 5]))
    noise = torch.stack([torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (3, 4)])
    with torch.no_grad():
        expected = sample_euler(guided_velocity(pipeline.model, cond, 3.0), noise, time_grid(6))
    got = torch.stack([torch.from_numpy(np.array(i)) for i in result.images]).float()
    torch.testing.assert_close(got, expected[:, 0].clamp(-1, 1).add(1).mul(127.5).round(), atol=1, rtol=0)


def test_a_time_shift_samples_on_the_warped_grid_and_one_is_the_even_grid(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    cond = Conditioning(labels=torch.tensor([2]))
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = sample_euler(guided_velocity(pipeline.model, cond, 3.0), noise, time_grid(6, shift=3.0))
    shifted = np.asarray(pipeline.generate("two", steps=6, seed=3, size=16, time_shift=3.0).images[0], dtype=float)
    even = np.asarray(pipeline.generate("two", steps=6, seed=3, size=16, time_shift=1.0).images[0], dtype=float)
    want = expected[0, 0].clamp(-1, 1).add(1).mul(127.5).round().numpy()
    assert np.abs(shifted - want).max() <= 1
    assert np.abs(shifted - even).mean() > 1  # the warp changes the image: it is not ignored


def test_progressive_pipeline_images_do_not_depend_on_the_batch(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    both = pipeline.generate(["two", "five"], steps=4, seed=7, resolution="high")
    alone = pipeline.generate("five", steps=4, seed=8, resolution="high")
    assert both.images[1].size == (32, 32)
    assert [s["size"] for s in both.metadata["stages"]] == [8, 16, 32]
    difference = np.abs(np.asarray(both.images[1], dtype=int) - np.asarray(alone.images[0], dtype=int))
    # equal but for float rounding at a uint8 boundary (batch size changes the kernels' sums)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (difference.max(), (difference > 0).sum())


def test_pipeline_takes_size_or_resolution_not_both(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    with pytest.raises(ValueError, match="not both"):
        pipeline.generate("one", size=16, resolution="standard")
    with pytest.raises(ValueError, match="multiple of 4"):
        pipeline.generate("one", resolution=18)
