"""AdaptiveDepth: step caching of an inner level, on and off."""

import json
import math

import pytest
import torch
from torch import nn

from fractalflow import Conditioning, FractalFlowPipeline, model_preset
from fractalflow.events import images_to_tensor, tensor_to_images
from fractalflow.flow import guided_velocity, sample_euler, time_grid
from fractalflow.flow.refine import seeded_noise
from fractalflow.model.adaptive import OFF, AdaptiveDepth, CachedLevel, CacheSettings, StepClock
from fractalflow.model.adaptive_policies import ADAPTIVE_FILE, AdaptivePolicies, policy_guidance
from fractalflow.model.transformer import FractalTransformer


@pytest.fixture
def model():
    torch.manual_seed(0)
    network = FractalTransformer(model_preset("tiny", in_channels=1, class_names=tuple("abcd"), sample_size=16))
    for parameter in network.parameters():  # zero-initialised gates would make every level a no-op
        parameter.data.normal_(0, 0.2)
    return network.eval()


ROWS = 4  # sample's batch: two prompts, each with its unconditional twin


def sample(model, steps=6, size=16):
    velocity = guided_velocity(model, Conditioning(labels=torch.tensor([1, 2])), 3.0)
    noise = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return sample_euler(velocity, noise, time_grid(steps))


def counts(adaptive: AdaptiveDepth) -> tuple[int, int]:
    report = adaptive.report()
    return report["computed"], report["reused"]


def test_caching_that_recomputes_every_step_is_bit_identical_to_full_compute(model):
    full = sample(model)
    with AdaptiveDepth(model, CacheSettings(every=1)) as adaptive:
        cached = sample(model)
    assert torch.equal(full, cached)
    assert counts(adaptive) == (6 * ROWS, 0)


def test_outside_the_block_the_model_is_unchanged(model):
    keys, full = list(model.state_dict()), sample(model)
    with AdaptiveDepth(model, CacheSettings(every=3)):
        sample(model)
    assert list(model.state_dict()) == keys and torch.equal(sample(model), full)


def test_the_schedule_reuses_the_level_between_computations(model):
    full = sample(model)
    with AdaptiveDepth(model, CacheSettings(every=3)) as adaptive:
        cached = sample(model)
    assert counts(adaptive) == (2 * ROWS, 4 * ROWS)  # steps 0 and 3 compute
    assert not torch.equal(full, cached)  # reused features (how close they are is benchmarks' business)


def test_an_input_that_drifted_past_the_threshold_is_recomputed(model):
    with AdaptiveDepth(model, CacheSettings(every=6, drift=0.0)) as always:
        sample(model)
    with AdaptiveDepth(model, CacheSettings(every=6, drift=None)) as never:
        sample(model)
    assert counts(always) == (6 * ROWS, 0)
    assert counts(never) == (1 * ROWS, 5 * ROWS)


def test_a_new_size_always_recomputes(model):
    with AdaptiveDepth(model, CacheSettings(every=100)) as adaptive:
        sample(model, steps=2, size=16)
        sample(model, steps=2, size=32)
    assert counts(adaptive) == (2 * ROWS, 2 * ROWS)


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(every=0), "every \\(0\\) >= 1"),
        (dict(depth=-1), "depth \\(-1\\) must be >= 0"),
        (dict(drift=-1.0), "drift \\(-1.0\\) must be >= 0"),
        (dict(drift=math.nan), "drift \\(nan\\) must be >= 0"),
        (dict(start=1.5), "start \\(1.5\\) and guidance_start \\(1.0\\) must be from 0 to 1"),
        (dict(guidance_every=0), "guidance_every \\(0\\) must be >= 1"),
        (dict(step_fraction=0.0), "step_fraction \\(0.0\\) must be above 0 and at most 1"),
        (dict(step_fraction=1.5), "step_fraction \\(1.5\\) must be above 0 and at most 1"),
        (dict(freeze_cross=2.0), "freeze_cross \\(2.0\\) must be from 0 to 1"),
    ],
)
def test_bad_cache_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        CacheSettings(**settings)


def test_a_level_the_model_does_not_have_is_a_clear_error(model):
    with pytest.raises(ValueError, match="depth=2: this model's inner levels are 1..1"):
        AdaptiveDepth(model, CacheSettings(depth=2))


def test_a_new_run_at_the_same_size_recomputes_its_first_step(model):
    with AdaptiveDepth(model, CacheSettings(every=100)) as adaptive:
        first = sample(model, steps=3)
        second = sample(model, steps=3)
    assert counts(adaptive) == (2 * ROWS, 4 * ROWS)
    assert torch.equal(first, second)  # the second run never saw the first one's features


def test_steps_above_the_start_time_always_compute(model):
    # 6 Euler steps evaluate at t = 1, 5/6, 4/6, 3/6, 2/6, 1/6: the first three are above 0.5
    with AdaptiveDepth(model, CacheSettings(every=100, start=0.5)) as adaptive:
        sample(model, steps=6)
    assert counts(adaptive) == (3 * ROWS, 3 * ROWS)


def test_the_report_counts_the_blocks_that_ran(model):
    config = model.config
    per_forward = sum(2 * d for d in config.depths[:-1]) + config.depths[-1]
    inner = sum(2 * d for d in config.depths[1:-1]) + config.depths[-1]
    with AdaptiveDepth(model, CacheSettings(every=3)) as adaptive:
        sample(model, steps=6)
    assert adaptive.report()["blocks_full"] == 6 * ROWS * per_forward
    assert adaptive.report()["blocks_run"] == 6 * ROWS * per_forward - 4 * ROWS * inner


class Counter(nn.Module):
    """A stand-in level whose n-th computation returns n (as a one-element tensor)."""

    def __init__(self):
        super().__init__()
        self.down_blocks, self.up_blocks, self.calls = [], [], 0

    def forward(self, x, *context):
        self.calls += 1
        return torch.tensor([float(self.calls)])


def run_level(settings: CacheSettings, times: list[float]) -> list[float]:
    clock = StepClock()
    level = CachedLevel(Counter(), settings, clock)
    outputs = []
    for t in times:
        clock.tick(torch.tensor([t]))
        outputs.append(float(level(torch.zeros(1))))
    return outputs


def test_extrapolation_continues_the_last_two_computations_linearly_in_time():
    # computed at t = 1.0 (-> 1) and 0.8 (-> 2); at t = 0.6 the line through them gives 3;
    # at t = 0.9 there is one computation only, served as it is
    assert run_level(CacheSettings(every=2, extrapolate=True), [1.0, 0.9, 0.8, 0.6]) == [1.0, 1.0, 2.0, 3.0]
    assert run_level(CacheSettings(every=2), [1.0, 0.9, 0.8, 0.6]) == [1.0, 1.0, 2.0, 2.0]


def test_a_batch_at_mixed_times_always_computes():
    clock = StepClock()
    level = CachedLevel(Counter(), CacheSettings(every=100), clock)
    for t in (1.0, 0.9, 0.8):
        clock.tick(torch.tensor([t, t - 0.05]))
        level(torch.zeros(1))
    assert (level.computed, level.reused) == (3, 0)


def test_a_batch_that_halves_where_guidance_stops_goes_on_with_the_conditional_rows_stored(model):
    clock = StepClock()
    level = CachedLevel(lambda x, *context: 2 * x, CacheSettings(every=100), clock)
    both = torch.arange(4.0).view(4, 1)  # guided_velocity's batch: conditional rows 0-1, then their copies
    clock.tick(torch.ones(4))
    level(both)
    clock.tick(torch.full((2,), 0.4))  # below the interval: the conditional rows alone
    assert torch.equal(level(both[:2] + 0.01), 2 * both[:2]) and (level.computed, level.reused) == (4, 2)

    # in a whole run: 4 steps guided at t = 1 .. 1/2 (4 rows), then 2 unguided (2 rows); no step
    # recomputes for the halving
    velocity = guided_velocity(model, Conditioning(labels=torch.tensor([1, 2])), 3.0, (0.5, 1.0))
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with AdaptiveDepth(model, CacheSettings(every=100)) as adaptive, torch.no_grad():
        sample_euler(velocity, noise, time_grid(6))
    assert counts(adaptive) == (4, 3 * 4 + 2 * 2)


class Doubler(nn.Module):
    """A stand-in level that doubles its input and records the batch of the context it was given."""

    def __init__(self):
        super().__init__()
        self.down_blocks, self.up_blocks, self.context_rows = [], [], []

    def forward(self, x, vector, *rest):
        self.context_rows.append(vector[:, 0].tolist())
        return 2 * x


def test_a_row_whose_input_drifted_recomputes_alone_and_the_others_are_served():
    clock, doubler = StepClock(), Doubler()
    level = CachedLevel(doubler, CacheSettings(every=100, drift=0.1), clock)
    x, vector = torch.ones(3, 2), torch.arange(3.0).view(3, 1)
    clock.tick(torch.ones(3))
    level(x, vector)
    moved = x + torch.tensor([[0.01], [0.5], [0.01]])  # row 1 drifts by 0.5 relative L2, the others by 0.01
    clock.tick(torch.full((3,), 0.8))
    out = level(moved, vector)
    assert torch.equal(out[1], 2 * moved[1]) and torch.equal(out[[0, 2]], 2 * x[[0, 2]])
    assert doubler.context_rows == [[0.0, 1.0, 2.0], [1.0]]  # the level ran on row 1 and its context only
    assert (level.computed, level.reused) == (3 + 1, 2)


@pytest.mark.parametrize("guidance_every", [1, 2])
def test_an_image_is_cached_the_same_whatever_shares_its_batch(model, guidance_every):
    # each image decides for itself: two prompts in one batch compute the level exactly as often
    # as each does alone, and draw the same images
    settings = CacheSettings(every=100, drift=1.3, guidance_every=guidance_every)

    def draw(labels):
        velocity = guided_velocity(model, Conditioning(labels=torch.tensor(labels)), 3.0)
        noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))[[label - 1 for label in labels]]
        with AdaptiveDepth(model, settings) as adaptive, torch.no_grad():
            return sample_euler(velocity, noise, time_grid(8)), adaptive.report()["computed"]

    (both, together), (first, alone_1), (second, alone_2) = draw([1, 2]), draw([1]), draw([2])
    assert together == alone_1 + alone_2 and alone_1 != alone_2
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-4)


def test_cached_guidance_reuses_the_last_guidance_direction_on_the_steps_between(model):
    cond, x = Conditioning(labels=torch.tensor([1, 2])), torch.randn(2, 1, 16, 16)
    t1, t2, guidance = torch.full((2,), 0.9), torch.full((2,), 0.8), 3.0
    velocity = guided_velocity(model, cond, guidance)
    with torch.no_grad():
        direction = model(x, t1, cond) - model(x, t1, cond, drop=torch.ones(2, dtype=torch.bool))
        expected = model(x, t2, cond) + (guidance - 1) * direction
        with AdaptiveDepth(model, CacheSettings(depth=0, guidance_every=2)) as adaptive:
            first, second = velocity(x, t1), velocity(x, t2)
    assert torch.allclose(first, velocity(x, t1)) and torch.allclose(second, expected, atol=1e-4)
    report = adaptive.report()
    assert (report["rows"], report["twins_skipped"]) == (8, 2)
    assert report["blocks_run"] == report["blocks_full"] * 6 // 8
    assert "forward" not in vars(model)  # the class's forward again


def test_a_cached_level_goes_on_across_steps_whose_twins_are_skipped(model):
    with AdaptiveDepth(model, CacheSettings(every=100, guidance_every=2)) as adaptive:
        sample(model)
    report = adaptive.report()
    # 6 steps of 2 images: the twins run on steps 0, 2 and 4; the level computes on step 0 only
    assert report["twins_skipped"] == 3 * 2
    assert (report["computed"], report["reused"]) == (ROWS, 2 * ROWS + 3 * 2)  # steps 2, 4; and 1, 3, 5


@pytest.fixture
def text_model():
    torch.manual_seed(0)
    network = FractalTransformer(model_preset("tiny", in_channels=1, cond_dim=8, sample_size=16))
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.2)
    return network.eval()


def sample_text(model, steps=6):
    generator = torch.Generator().manual_seed(1)
    cond = Conditioning(pooled=torch.randn(2, 8, generator=generator), tokens=torch.randn(2, 3, 8, generator=generator))
    noise = torch.randn(2, 1, 16, 16, generator=generator)
    with torch.no_grad():
        return sample_euler(guided_velocity(model, cond, 3.0), noise, time_grid(steps))


def test_frozen_cross_attention_serves_its_last_output_below_the_freezing_time(text_model):
    layers = sum(1 for m in text_model.modules() if getattr(m, "cross", None) is not None)
    assert layers > 0
    full = sample_text(text_model)
    with AdaptiveDepth(text_model, CacheSettings(depth=0, freeze_cross=0.5)) as adaptive:
        frozen = sample_text(text_model)
    # t = 3/6, 2/6, 1/6 are at or below 0.5; rows: two prompts and their unconditional twins
    assert adaptive.report()["cross_frozen"] == 3 * layers * 4
    assert not torch.equal(full, frozen)
    with AdaptiveDepth(text_model, CacheSettings(depth=0, freeze_cross=0.0)) as never:
        assert torch.equal(sample_text(text_model), full)
    assert never.report()["cross_frozen"] == 0
    assert torch.equal(sample_text(text_model), full)  # put back on exit


def write_policies(folder, auto=2.0):
    policies = AdaptivePolicies({1.5: CacheSettings(every=2), 2.0: CacheSettings(every=3)}, auto=auto)
    (folder / ADAPTIVE_FILE).write_text(json.dumps(policies.to_dict()))


def test_adaptive_off_is_bit_identical_to_sampling_the_model_directly(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    result = pipeline.generate("three", steps=4, seed=5, adaptive="off")
    noise = seeded_noise([5], 1, "cpu")(16)
    with torch.no_grad():
        velocity = guided_velocity(pipeline.model, pipeline.encode_prompts(["three"]), 3.0)
        direct = sample_euler(velocity, noise, time_grid(4))
    assert torch.equal(images_to_tensor(result.images), images_to_tensor(tensor_to_images(direct)))
    assert result.metadata["adaptive"]["settings"] is None
    assert result.metadata["adaptive"]["blocks_run"] == result.metadata["adaptive"]["blocks_full"]


def test_a_speedup_picks_the_largest_calibrated_target_not_above_it(tiny_model_folder):
    write_policies(tiny_model_folder)
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    chosen = {asked: pipeline.adaptive_settings(asked) for asked in (1.2, 1.5, 1.9, 2.0, 3.0, "auto", "off")}
    assert chosen[1.2] == (OFF, None) and chosen["off"] == (OFF, None)
    assert chosen[1.5] == chosen[1.9] == (CacheSettings(every=2), 1.5)
    assert chosen[2.0] == chosen[3.0] == chosen["auto"] == (CacheSettings(every=3), 2.0)


def test_metadata_and_events_count_the_blocks_that_ran(tiny_model_folder):
    write_policies(tiny_model_folder)
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    events = []
    result = pipeline.generate("three", steps=6, seed=5, adaptive=2.0, callback=events.append)
    report = result.metadata["adaptive"]
    assert report["target"] == 2.0 and report["settings"] == CacheSettings(every=3).to_dict()
    assert (report["computed"], report["reused"]) == (2 * 2, 4 * 2)  # rows: the prompt and its twin
    assert report["blocks_run"] < report["blocks_full"]
    assert [e.blocks_run for e in events][-1] == report["blocks_run"]
    assert all(a < b for a, b in zip([e.blocks_run for e in events], [e.blocks_run for e in events][1:]))


def test_a_coarse_to_fine_run_reports_each_scale_s_share_and_they_sum_to_the_whole(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    result = pipeline.generate("three", steps=8, seed=5, resolution="high", adaptive=CacheSettings(every=2))
    report, stages = result.metadata["adaptive"], result.metadata["stages"]
    assert list(report["by_size"]) == [stage["size"] for stage in stages] == [8, 16, 32]
    for key in ("rows", "computed", "reused", "blocks_run", "blocks_full"):
        assert sum(part[key] for part in report["by_size"].values()) == report[key]
    first = report["by_size"][8]
    assert first["rows"] == 2 * stages[0]["steps_run"]  # guided on every step: the prompt and its twin
    assert first["reused"] > 0


def test_images_of_a_calibrated_size_use_its_policies_and_larger_ones_the_nearest_below(tiny_model_folder):
    own, larger = CacheSettings(every=2), CacheSettings(depth=0, step_fraction=0.5, refine_steps=1)
    policies = AdaptivePolicies({2.0: own}, auto=2.0, sizes={32: AdaptivePolicies({2.0: larger}, auto=2.0)})
    (tiny_model_folder / ADAPTIVE_FILE).write_text(json.dumps(policies.to_dict()))
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    assert pipeline.adaptive_policies == policies  # as written
    assert pipeline.adaptive_settings("auto") == pipeline.adaptive_settings("auto", 24) == (own, 2.0)
    assert pipeline.adaptive_settings("auto", 32) == pipeline.adaptive_settings(2.0, 64) == (larger, 2.0)
    result = pipeline.generate("three", steps=8, seed=5, resolution="high", adaptive="auto")
    assert result.metadata["adaptive"]["settings"] == larger.to_dict()
    assert [stage["steps"] for stage in result.metadata["stages"]] == [4, 1, 1]


@pytest.mark.parametrize("sizes", [[], {"big": {"policies": []}}, {"0": {"policies": []}}])
def test_policies_by_size_must_be_keyed_by_pixels(tiny_model_folder, sizes):
    policies = {"policies": [{"target": 2, "settings": {"every": 3}}], "sizes": sizes}
    (tiny_model_folder / ADAPTIVE_FILE).write_text(json.dumps(policies))
    with pytest.raises(ValueError, match="adaptive.json: 'sizes' must map image sides in pixels to policies"):
        FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")


@pytest.mark.parametrize("fraction,steps_run", [(0.5, 3), (0.1, 2), (1.0, 6)])
def test_a_step_fraction_runs_fewer_steps_and_the_metadata_keeps_what_was_asked(tiny_model_folder, fraction, steps_run):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    result = pipeline.generate("three", steps=6, seed=5, adaptive=CacheSettings(depth=0, step_fraction=fraction))
    assert [stage["steps"] for stage in result.metadata["stages"]] == [steps_run]
    assert result.metadata["config"]["steps"] == 6


def test_an_uncalibrated_model_runs_auto_in_full_and_refuses_a_speedup(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    assert pipeline.adaptive_settings("auto") == (OFF, None)
    with pytest.raises(ValueError, match="no adaptive.json; run 'fractalflow calibrate'"):
        pipeline.generate("three", steps=2, adaptive=2.0)


@pytest.mark.parametrize("asked", ["fast", 0.5, 9.0, math.nan, True])
def test_bad_adaptive_values_are_clear_errors(tiny_model_folder, asked):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    with pytest.raises(ValueError, match="allowed are 'off', 'auto', a speed-up from 1 to 8"):
        pipeline.generate("three", steps=2, adaptive=asked)


def test_a_broken_adaptive_file_is_a_clear_error(tiny_model_folder):
    (tiny_model_folder / ADAPTIVE_FILE).write_text('{"policies": [{"target": 2, "settings": {"every": "3"}}]}')
    with pytest.raises(ValueError, match="adaptive.json: .*every"):
        FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")


def guided_time(steps, interval=(0.7, 1.0), partial=None, shift=3.0):
    """How much flow time a grid of ``steps`` guides, the ``partial`` step by its share."""
    times = time_grid(steps, shift).tolist()
    total = 0.0
    for start, stop in zip(times[:-1], times[1:]):
        share = partial[1] if partial and start == partial[0] else float(interval[0] <= start <= interval[1])
        total += share * (start - stop)
    return total


@pytest.mark.parametrize("kept", range(2, 20))
def test_a_policy_with_fewer_steps_guides_the_stretch_of_flow_time_full_compute_guides(kept):
    full = guided_time(20)  # 0.333 on the default model's grid: down to t = 0.667
    partial = policy_guidance((0.7, 1.0), 20, kept, 3.0)
    assert guided_time(kept, partial=partial) == pytest.approx(full, abs=1e-6)
    if partial is not None:
        assert 0 < partial[1] < 1 and partial[0] in time_grid(kept, 3.0).tolist()


def test_no_step_is_partly_guided_when_none_is_cut_or_the_shorter_grid_ends_guidance_where_the_full_one_does():
    assert guided_time(14) != pytest.approx(guided_time(20), abs=1e-3)  # what the partial step mends
    assert policy_guidance((0.7, 1.0), 20, 20, 3.0) is None
    assert policy_guidance(None, 20, 14, 3.0) is None
    assert policy_guidance((0.7, 1.0), 20, 10, 3.0) is None  # 10 of the 20 times: the same end


def test_the_partly_guided_step_takes_its_share_of_the_guidance(model):
    cond = Conditioning(labels=torch.tensor([1, 2]))
    x, t = torch.randn(2, 1, 16, 16), torch.full((2,), 0.65)
    time = float(t[0])  # as the sampler passes it: a float32 grid time
    with torch.no_grad():
        plain = guided_velocity(model, cond, 5.0, (0.7, 1.0))(x, t)
        guided = guided_velocity(model, cond, 5.0)(x, t)
        none, whole, half = (guided_velocity(model, cond, 5.0, (0.7, 1.0), (time, s))(x, t) for s in (0.0, 1.0, 0.5))
        elsewhere = guided_velocity(model, cond, 5.0, (0.7, 1.0), (0.6, 0.5))(x, t)
    assert torch.allclose(none, plain, atol=1e-5) and torch.allclose(whole, guided, atol=1e-5)
    assert torch.allclose(half, (plain + guided) / 2, atol=1e-5)  # the scale is linear in the share
    assert not torch.allclose(plain, guided) and torch.equal(elsewhere, plain)


def test_a_step_cutting_policy_reports_its_partly_guided_step(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    asked = dict(steps=20, time_shift=3.0, guidance_interval=(0.7, 1.0), seed=5)
    cut = pipeline.generate("three", adaptive=CacheSettings(depth=0, step_fraction=0.7), **asked)
    full = pipeline.generate("three", adaptive="off", **asked)
    assert full.metadata["adaptive"]["partial_guidance"] is None
    assert cut.metadata["adaptive"]["partial_guidance"] == list(policy_guidance((0.7, 1.0), 20, 14, 3.0))
    assert cut.metadata["stages"][0]["steps"] == 14
