"""GenerationConfig: one validation, a model folder's defaults, and the CLI and HTTP schema
derived from it."""

import dataclasses
import json

import numpy as np
import pytest

from fractalflow import FractalFlowPipeline, GenerationConfig
from fractalflow.cli import build_parser
from fractalflow.config import MAX_GUIDANCE, MAX_STEPS, MAX_TIME_SHIFT
from fractalflow.generation import GENERATION_CONFIG_NAME, MAX_GRID_JITTER
from fractalflow.plugins import registry
from fractalflow.serving.config import ServerConfig
from fractalflow.serving.schemas import SERVED_SETTINGS, request_model

SETTINGS = [f.name for f in dataclasses.fields(GenerationConfig)]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"steps": 0}, f"steps=0 must be from 1 to {MAX_STEPS}"),
        ({"steps": 2.5}, "steps=2.5 must be a whole number"),
        ({"guidance": float("nan")}, "guidance=nan must be a finite number"),
        ({"guidance": -1.0}, f"guidance=-1.0 must be from 0 to {MAX_GUIDANCE:g}"),
        ({"early_stop": 2.0}, "early_stop=2.0 must be from 0 to 1"),
        ({"upscale_strength": 0.0}, "upscale_strength=0.0 must be in (0, 1]"),
        ({"size": 64, "resolution": "high"}, "give size (one scale) or resolution (coarse to fine), not both"),
        ({"sampler": "ddim"}, "unknown sampler 'ddim'"),
        ({"resolution": "huge"}, "unknown resolution 'huge'"),
        ({"scales": (1.0, 0.5)}, "must be positive, finite and strictly increasing"),
        ({"scales": tuple(float(i) for i in range(1, 10))}, "give 1 to 8 scales"),
        ({"adaptive": "fast"}, "adaptive='fast': allowed are 'off', 'auto'"),
        ({"guidance_interval": (0.8, 0.2)}, "guidance_interval=(0.8, 0.2): give low:high with 0 <= low < high <= 1"),
        ({"guidance_interval": (0.0, float("inf"))}, "give low:high with 0 <= low < high <= 1"),
        ({"time_shift": 0.0}, f"time_shift=0.0 must be in (0, {MAX_TIME_SHIFT:g}]"),
        ({"time_shift": float("inf")}, "time_shift=inf must be a finite number"),
        ({"grid_jitter": 17}, f"grid_jitter=17 must be from 0 to {MAX_GRID_JITTER}"),
        ({"grid_jitter": 1.5}, "grid_jitter=1.5 must be a whole number"),
    ],
)
def test_each_bad_setting_gets_one_line_naming_it_and_what_is_allowed(values, message):
    with pytest.raises(ValueError, match="invalid GenerationConfig") as error:
        GenerationConfig(**values)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_size_given_over_defaults_replaces_their_resolution_and_the_other_way_round():
    coarse_to_fine = GenerationConfig(resolution="high", steps=30)
    assert coarse_to_fine.merged(size=128) == GenerationConfig(size=128, steps=30)
    assert GenerationConfig(size=128).merged(resolution="high") == GenerationConfig(resolution="high")
    assert coarse_to_fine.merged(steps=None) == coarse_to_fine  # None leaves a setting as it is
    with pytest.raises(ValueError, match=r"unknown generation setting\(s\) \['stpes'\]; allowed: \["):
        coarse_to_fine.merged(stpes=10)


def test_a_model_folder_carries_its_defaults_and_a_call_goes_over_them(tmp_path, tiny_class_model):
    pipeline = FractalFlowPipeline(tiny_class_model)
    pipeline.generation_config = GenerationConfig(steps=3, guidance=1.5)
    pipeline.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / GENERATION_CONFIG_NAME).read_text())["steps"] == 3

    loaded = FractalFlowPipeline.from_pretrained(tmp_path / "model", device="cpu")
    assert loaded.generation_config == GenerationConfig(steps=3, guidance=1.5)
    by_default = loaded.generate("three", seed=0)
    assert by_default.metadata["config"] == {**GenerationConfig().to_dict(), "steps": 3, "guidance": 1.5}
    explicit = loaded.generate("three", seed=0, config=GenerationConfig(steps=3, guidance=1.5))
    assert np.array_equal(np.asarray(by_default.images[0]), np.asarray(explicit.images[0]))
    assert loaded.generate("three", seed=0, steps=2).metadata["config"]["steps"] == 2


def test_a_folder_without_generation_config_gets_the_library_defaults(tiny_model_folder):
    assert FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu").generation_config == GenerationConfig()


def test_generate_and_eval_have_one_option_per_setting_with_its_limits():
    parser = build_parser()
    for command in ("generate", "eval"):
        sub = parser._subparsers._group_actions[0].choices[command]
        flags = {action.dest: action for action in sub._actions}
        assert set(SETTINGS) <= set(flags), command
        assert all(flags[name].default is None for name in SETTINGS)  # left out: the model's default
        assert f"from 1 to {MAX_STEPS}" in flags["steps"].help


def test_the_http_schema_takes_limits_defaults_and_help_from_the_config():
    server = ServerConfig(max_steps=50, max_guidance=10.0)
    defaults = GenerationConfig(steps=12, sampler="heun", adaptive="auto")
    model = request_model(server, defaults, {"standard": 64, "high": 128}, multiple=16, most_images=2)
    schema = model.model_json_schema()["properties"]
    help_of = {f.name: f.metadata["help"] for f in dataclasses.fields(GenerationConfig)}
    assert schema["steps"]["maximum"] == 50 and schema["steps"]["default"] == 12
    assert schema["guidance"]["maximum"] == 10.0 and schema["guidance"]["minimum"] == 0.0
    assert schema["sampler"]["default"] == "heun" and set(schema["sampler"]["enum"]) == set(registry().names("sampler"))
    assert schema["adaptive"]["default"] == "auto"
    assert all(schema[name]["description"] == help_of[name] for name in SERVED_SETTINGS)

    request = model(prompt="red heart", steps=4)
    # the model's standard resolution, named: the schema lists the resolutions a client may ask for
    expected = GenerationConfig(steps=4, sampler="heun", adaptive="auto", resolution="standard")
    assert request.generation_config(defaults) == expected
    with pytest.raises(ValueError, match="steps"):
        model(prompt="red heart", steps=51)
