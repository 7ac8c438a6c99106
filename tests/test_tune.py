"""fractalflow tune: a multi-objective search over GenerationConfig (Optuna)."""

import pytest
import torch
from conftest import randomize

from fractalflow import FractalFlowPipeline, FractalTransformer, GenerationConfig, model_preset
from fractalflow.monitoring.tune import (
    GUIDED_DOWN_TO,
    TIME_SHIFTS,
    TuneSettings,
    choose,
    pareto_front,
    pareto_svg,
    tune,
)


def trial(number, seconds, fd):
    return {"trial": number, "seconds": seconds, "fd": fd, "config": {}}


def test_the_front_keeps_only_trials_nothing_beats_on_both_objectives():
    trials = [trial(0, 1.0, 100.0), trial(1, 0.5, 101.0), trial(2, 0.6, 120.0), trial(3, 2.0, 90.0)]
    assert [t["trial"] for t in pareto_front(trials)] == [0, 1, 3]


def test_the_chosen_config_is_the_fastest_on_the_front_within_the_fd_tolerance_of_the_defaults():
    trials = [trial(0, 1.0, 100.0), trial(1, 0.5, 101.0), trial(2, 0.3, 110.0), trial(3, 2.0, 90.0)]
    assert choose(trials, fd_tolerance=0.02)["trial"] == 1
    assert choose(trials, fd_tolerance=0.0)["trial"] == 0  # nothing faster at equal FD: keep the defaults
    assert choose(trials, fd_tolerance=0.2)["trial"] == 2


def test_tune_starts_from_the_defaults_and_reports_every_trial(encoder):
    model = randomize(FractalTransformer(model_preset("tiny", in_channels=3, cond_dim=384, sample_size=16)))
    pipeline = FractalFlowPipeline(model, text_encoder=encoder)
    pipeline.generation_config = GenerationConfig(steps=3)
    captions = ["red heart", "blue heart", "cat face", "dog face", "rocket", "bell icon"]
    real = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = tune(pipeline, captions, real, TuneSettings(trials=3, captions=6, batch_size=6, max_steps=4))
    assert [t["trial"] for t in result["trials"]] == [0, 1, 2]
    assert result["trials"][0]["config"] == GenerationConfig(steps=3).describe()
    assert all(t["seconds"] > 0 and t["fd"] >= 0 for t in result["trials"])
    assert result["chosen"] in result["pareto"] or result["chosen"] is result["trials"][0]
    assert GenerationConfig.from_dict(result["chosen"]["config"]).steps <= 4
    intervals = {tuple(t["config"]["guidance_interval"] or ()) for t in result["trials"][1:]}
    assert intervals <= {(low, 1.0) for low in GUIDED_DOWN_TO}  # where guidance stops is searched too
    assert {t["config"]["time_shift"] for t in result["trials"][1:]} <= set(TIME_SHIFTS)  # and the time grid
    assert pareto_svg(result).count("<circle") == 3 + 2


def test_tune_settings_are_checked():
    with pytest.raises(ValueError, match="trials=1 must be from 2 to 1000"):
        TuneSettings(trials=1)
