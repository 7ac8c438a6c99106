"""AdaptiveDepth: step caching of an inner level, on and off."""

import math

import pytest
import torch

from fractalflow import Conditioning, model_preset
from fractalflow.flow import guided_velocity, sample_euler, time_grid
from fractalflow.model.adaptive import AdaptiveDepth, CacheSettings
from fractalflow.model.transformer import FractalTransformer


@pytest.fixture
def model():
    torch.manual_seed(0)
    network = FractalTransformer(model_preset("tiny", in_channels=1, class_names=tuple("abcd"), sample_size=16))
    for parameter in network.parameters():  # zero-initialised gates would make every level a no-op
        parameter.data.normal_(0, 0.2)
    return network.eval()


def sample(model, steps=6, size=16):
    velocity = guided_velocity(model, Conditioning(labels=torch.tensor([1, 2])), 3.0)
    noise = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return sample_euler(velocity, noise, time_grid(steps))


def test_caching_that_recomputes_every_step_is_bit_identical_to_full_compute(model):
    full = sample(model)
    with AdaptiveDepth(model, CacheSettings(every=1)) as adaptive:
        cached = sample(model)
    assert torch.equal(full, cached)
    assert adaptive.report() == {"computed": 6, "reused": 0}


def test_outside_the_block_the_model_is_unchanged(model):
    keys, full = list(model.state_dict()), sample(model)
    with AdaptiveDepth(model, CacheSettings(every=3)):
        sample(model)
    assert list(model.state_dict()) == keys and torch.equal(sample(model), full)


def test_the_schedule_reuses_the_level_between_computations(model):
    full = sample(model)
    with AdaptiveDepth(model, CacheSettings(every=3)) as adaptive:
        cached = sample(model)
    assert adaptive.report() == {"computed": 2, "reused": 4}  # steps 0 and 3 compute
    assert not torch.equal(full, cached)  # reused features (how close they are is benchmarks' business)


def test_an_input_that_drifted_past_the_threshold_is_recomputed(model):
    with AdaptiveDepth(model, CacheSettings(every=6, drift=0.0)) as always:
        sample(model)
    with AdaptiveDepth(model, CacheSettings(every=6, drift=math.inf)) as never:
        sample(model)
    assert always.report() == {"computed": 6, "reused": 0}
    assert never.report() == {"computed": 1, "reused": 5}


def test_a_new_size_always_recomputes(model):
    with AdaptiveDepth(model, CacheSettings(every=100)) as adaptive:
        sample(model, steps=2, size=16)
        sample(model, steps=2, size=32)
    assert adaptive.report() == {"computed": 2, "reused": 2}


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(every=0), "every \\(0\\) must be >= 1"),
        (dict(drift=-1.0), "drift \\(-1.0\\) >= 0"),
        (dict(drift=math.nan), "drift \\(nan\\) >= 0"),
    ],
)
def test_bad_cache_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        CacheSettings(**settings)


def test_a_level_the_model_does_not_have_is_a_clear_error(model):
    with pytest.raises(ValueError, match="depth=2: this model's inner levels are 1..1"):
        AdaptiveDepth(model, CacheSettings(depth=2))
