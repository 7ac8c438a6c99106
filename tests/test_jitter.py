"""Grid jitter: the network's grid moves under the image, the image does not move."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fractalflow.evaluation.seams import line_steps
from fractalflow.export.runtime import grid_jitter
from fractalflow.flow import sample_euler, time_grid
from fractalflow.flow.jitter import GridJitter, jitter_offset, shifted_window

FIXTURE = Path(__file__).parents[1] / "web/tests/fixtures/grid-jitter.json"


def test_offsets_start_unshifted_and_cover_every_shift_evenly():
    amplitude = 2
    offsets = [jitter_offset(call, amplitude) for call in range(2500)]
    assert offsets[0] == (0, 0)
    counts = Counter(offsets)
    assert set(counts) == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert max(counts.values()) < 1.2 * min(counts.values())
    assert offsets[1] != offsets[2]  # consecutive steps move the grid


def test_shifted_window_moves_the_content_and_fills_from_the_padding():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    moved = shifted_window(image, dy=1, dx=-1, pad=1, mode="constant")
    assert torch.equal(moved[0, 0, 1:, :3], image[0, 0, :3, 1:])  # moved[i, j] = image[i - 1, j + 1]
    assert moved[0, 0, 0].eq(0).all() and moved[0, 0, :, 3].eq(0).all()
    mirrored = shifted_window(image, dy=1, dx=0, pad=1, mode="reflect")
    assert torch.equal(mirrored[0, 0, 0], image[0, 0, 1])  # the row opened on top mirrors the one below


def test_a_velocity_that_ignores_position_is_unchanged_where_it_was_seen():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def pointwise(x, t):
        return x * t[:, None, None, None] - 1

    jitter = GridJitter(pointwise, amplitude=3)
    for call in range(6):
        t = torch.full((2,), 1.0 - call / 10)
        jittered = jitter(x, t)
        dy, dx = jitter_offset(call, 3)
        rows = slice(max(0, -dy), 16 - max(0, dy))  # image rows the moved frame still showed
        columns = slice(max(0, -dx), 16 - max(0, dx))
        assert torch.allclose(jittered[..., rows, columns], pointwise(x, t)[..., rows, columns])


def test_pixels_moved_out_of_the_frame_keep_their_last_velocity():
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    calls = iter([torch.full_like(x, 1.0), torch.full_like(x, 2.0)])
    jitter = GridJitter(lambda x, t: next(calls), amplitude=2)
    first = jitter(x, torch.ones(1))
    assert jitter_offset(1, 2) == (-1, -2)  # the frame shows image[i + 1, j + 2]: the top row and
    second = jitter(x, torch.ones(1))  # the two left columns leave it
    assert first.eq(1).all()
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:1, :] = True
    left[:, :2] = True
    assert second[..., left].eq(1).all() and second[..., ~left].eq(2).all()


def test_a_new_size_starts_unshifted():
    seen = []

    def record(x, t):
        seen.append(x.clone())
        return torch.zeros_like(x)

    jitter = GridJitter(record, amplitude=2)
    small, large = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 16, 16)
    jitter(small, torch.ones(1))
    jitter(small, torch.ones(1))
    jitter(large, torch.ones(1))
    assert torch.equal(seen[0], small) and not torch.equal(seen[1], small)
    assert torch.equal(seen[2], large)


def test_amplitude_zero_is_the_velocity_itself():
    x = torch.randn(1, 3, 8, 8)
    velocity = GridJitter(lambda x, t: x.flip(-1), amplitude=0)
    for _ in range(3):
        assert torch.equal(velocity(x, torch.ones(1)), x.flip(-1))
    with pytest.raises(ValueError, match="grid_jitter=-1 must be >= 0"):
        GridJitter(lambda x, t: x, amplitude=-1)


def test_jitter_spreads_a_seam_the_network_draws_at_a_fixed_place_of_its_frame():
    """A velocity that adds a line at column 8 of its own frame on every step (a seam): sampled in
    place the image gets the whole line there; jittered, the line spreads over the columns
    around it, a fifth of it on each."""

    def with_seam(x, t):
        seam = torch.zeros_like(x)
        seam[..., 8] = -1.0
        return seam

    start = torch.zeros(1, 3, 16, 16)
    plain = sample_euler(with_seam, start, time_grid(50))
    jittered = sample_euler(GridJitter(with_seam, amplitude=2), start, time_grid(50))
    assert torch.allclose(plain[0, 0, 0, 8], torch.tensor(1.0))
    columns = jittered[0, 0, 0]  # (16,): the line's share on each column
    assert torch.allclose(columns[6:11].sum(), torch.tensor(1.0)) and columns[6:11].max() < 0.3
    assert line_steps(jittered)[7] < 0.3 * line_steps(plain)[7]  # entry 7: the step across line 8


def test_the_onnx_runtime_and_the_browser_jitter_as_the_pipeline_does():
    """The fixture is GridJitter's output; web/tests/sampler.test.ts checks the browser's
    gridJitter against it, and here the pipeline's and the ONNX runtime's numpy version."""
    fixture = json.loads(FIXTURE.read_text())
    shape = (1, fixture["channels"], fixture["size"], fixture["size"])
    ramp = torch.tensor(fixture["ramp"]).reshape(shape)
    pipeline = GridJitter(lambda x, t: x * ramp + t[:, None, None, None], fixture["amplitude"])
    runtime = grid_jitter(lambda x, t: x * ramp.numpy() + np.float32(t), fixture["amplitude"])
    assert [list(jitter_offset(k, fixture["amplitude"])) for k in range(len(fixture["calls"]))] == fixture["offsets"]
    for call in fixture["calls"]:
        x = torch.tensor(call["x"]).reshape(shape)
        expected = torch.tensor(call["velocity"]).reshape(shape)
        assert torch.allclose(pipeline(x, torch.tensor([call["t"]])), expected, atol=1e-5)
        assert np.allclose(runtime(x.numpy(), call["t"]), expected.numpy(), atol=1e-5)


def test_with_jitter_a_policy_keeps_its_fewer_steps_but_not_its_caches(tiny_model_folder):
    """Features stored at one offset do not fit the next step's: served, they cost FD +19 %
    (benchmarks/guidance.py, grid_jitter=1 with adaptive=auto)."""
    from fractalflow import FractalFlowPipeline
    from fractalflow.model.adaptive import CacheSettings

    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    policy = CacheSettings(depth=1, every=2, start=1.0, guidance_every=2, step_fraction=0.5)
    cached = pipeline.generate("five", steps=8, seed=0, size=16, adaptive=policy).metadata
    jittered = pipeline.generate("five", steps=8, seed=0, size=16, adaptive=policy, grid_jitter=1).metadata
    assert cached["adaptive"]["reused"] > 0 and cached["adaptive"]["twins_skipped"] > 0
    assert jittered["adaptive"]["reused"] == jittered["adaptive"]["twins_skipped"] == 0
    assert [stage["steps"] for stage in jittered["stages"]] == [4]
