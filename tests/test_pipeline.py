"""FractalFlowPipeline: loading, generating, saving, the shipped default model."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fractalflow import FractalFlowPipeline
from fractalflow.flow.refine import seeded_noise
from fractalflow.pipeline import default_model_folder, save_png


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_save_then_load_gives_identical_images(tmp_path, tiny_class_model):
    pipeline = FractalFlowPipeline(tiny_class_model)
    before = pipeline.generate(["three", "seven"], steps=4, seed=5)
    pipeline.save_pretrained(tmp_path / "saved")
    after = FractalFlowPipeline.from_pretrained(tmp_path / "saved", device="cpu").generate(
        ["three", "seven"], steps=4, seed=5
    )
    for a, b in zip(before.images, after.images):
        assert np.array_equal(pixels(a), pixels(b))


def test_same_seed_same_image_and_other_seed_other_image(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    first = pipeline.generate("five", steps=3, seed=1).images[0]
    again = pipeline.generate("five", steps=3, seed=1).images[0]
    other = pipeline.generate("five", steps=3, seed=2).images[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


@pytest.mark.parametrize("grid_jitter", [0, 2])
def test_image_does_not_depend_on_the_rest_of_the_batch(tiny_model_folder, grid_jitter):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    batch = pipeline.generate(["one", "two"], steps=3, seed=10, grid_jitter=grid_jitter)
    alone = pipeline.generate("two", steps=3, seed=11, grid_jitter=grid_jitter)
    assert batch.metadata["seeds"] == [10, 11]
    assert np.abs(pixels(batch.images[1]) - pixels(alone.images[0])).max() <= 1


def test_latents_replace_the_seeded_starting_noise_and_must_fit_the_first_scale(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    size = pipeline.config.sample_size
    seeded = pipeline.generate(["one", "two"], steps=3, seeds=[4, 5])
    start = seeded_noise([4, 5], pipeline.config.in_channels, "cpu")(size)
    given = pipeline.generate(["one", "two"], steps=3, seeds=[0, 0], latents=start)
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(seeded.images, given.images))
    other = pipeline.generate(["one", "two"], steps=3, seeds=[4, 5], latents=-start)
    assert not np.array_equal(pixels(seeded.images[0]), pixels(other.images[0]))
    with pytest.raises(ValueError, match=r"latents of shape \(1, 1, 8, 8\): this call starts from \(2, 1, 16, 16\)"):
        pipeline.generate(["one", "two"], steps=3, latents=torch.zeros(1, 1, 8, 8))


def test_callback_gets_a_finite_preview_every_step(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    events = []
    result = pipeline.generate("four", steps=5, seed=0, size=32, callback=events.append)
    assert [e.step for e in events] == [1, 2, 3, 4, 5] and {e.total for e in events} == {5}
    assert all(torch.isfinite(e.preview).all() and e.preview.shape == (1, 1, 32, 32) for e in events)
    assert events[-1].preview_images()[0].size == (32, 32)
    assert result.images[0].size == (32, 32) and result.metadata["config"]["steps"] == 5


def test_prompt_must_name_a_class_of_a_class_conditional_model(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    assert pipeline.encode_prompts(["a digit seven, bold"]).labels.tolist() == [7]
    with pytest.raises(ValueError, match="allowed classes: zero, one"):
        pipeline.generate("a cat", steps=1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"steps": 0}, "steps=0 must be from 1 to 1000"),
        ({"size": 18}, "multiples of 4"),
        ({"sampler": "dpm"}, "euler"),
        ({"guidance": -1.0}, "guidance"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ],
)
def test_bad_settings_raise_clear_errors(tiny_model_folder, kwargs, message):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    with pytest.raises(ValueError, match=message):
        pipeline.generate("one", **kwargs)


def test_png_keeps_metadata_and_failed_write_leaves_no_file(tmp_path):
    image = Image.new("L", (8, 8), 128)
    path = save_png(image, tmp_path / "out.png", {"seed": 3}, upscale=2)
    with Image.open(path) as loaded:
        assert loaded.size == (16, 16) and json.loads(loaded.text["fractalflow"]) == {"seed": 3}
    with pytest.raises(ValueError, match=r"\.png"):
        save_png(image, tmp_path / "out.jpg", {})
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_hub_id_loads_from_the_local_hub_cache_offline(tmp_path, tiny_model_folder, monkeypatch):
    snapshot = tmp_path / "hub" / "models--fractalflow--tiny-digits" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in tiny_model_folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    pipeline = FractalFlowPipeline.from_pretrained("fractalflow/tiny-digits", device="cpu")
    assert pipeline.config.class_names[3] == "three"
    with pytest.raises(FileNotFoundError, match="not in the hub cache"):
        FractalFlowPipeline.from_pretrained("fractalflow/missing-model", device="cpu")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FractalFlowPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        FractalFlowPipeline.from_pretrained(tmp_path / "empty")


def test_a_path_typo_beside_an_existing_folder_is_not_read_as_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="read as a local path because 'runs' is a folder here"):
        FractalFlowPipeline.from_pretrained("runs/modle")


def test_default_model_ships_in_the_package_and_follows_the_prompt():
    folder = default_model_folder()
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 30 * 1024**2 and (folder / "MODEL_CARD.md").is_file()
    pipeline = FractalFlowPipeline.default(device="cpu")
    assert not pipeline.config.is_class_conditional  # text-to-image
    result = pipeline.generate(["red heart", "bicycle icon"], num_images_per_prompt=2, steps=12, seed=0, size=64)
    images = np.stack([pixels(image).astype(float) for image in result.images])
    heart, icon = images[:2], images[2:]
    assert heart.std() > 20 and icon.std() > 20  # not blank
    # the heart is red: red well above green and blue; the line icon is black on white: no colour
    assert (heart[..., 0] - heart[..., 1:].mean(-1)).mean() > 30
    assert np.abs(icon - icon.mean(-1, keepdims=True)).mean() < 10


def test_default_model_ships_calibrated_step_caching_that_auto_uses():
    pipeline = FractalFlowPipeline.default(device="cpu")
    policies = pipeline.adaptive_policies
    assert policies is not None and policies.auto in policies.policies
    settings, target = pipeline.adaptive_settings("auto")
    assert target == policies.auto and settings.depth >= 1  # auto reuses a level: it is not off
    calibration = json.loads((default_model_folder() / "adaptive.json").read_text())["calibration"]
    assert len(calibration["rows"]) > 10 and calibration["settings"]["captions"] >= 32


def test_metadata_flags_non_finite_and_blank_images_per_image():
    from fractalflow.monitoring import image_health

    images = torch.rand(4, 3, 8, 8) * 2 - 1
    images[1, 0, 0, 0] = float("nan")
    images[2] = 0.3  # one flat colour
    images[3] *= 3.0  # most values far outside [-1, 1]
    reports = image_health(images)
    assert [r["flagged"] for r in reports] == [False, True, True, True]
    assert not reports[1]["finite"] and reports[2]["blank"] and reports[3]["out_of_range"] > 0.5


def test_every_generated_image_gets_a_health_report(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    result = pipeline.generate(["one", "two"], steps=3, seed=0)
    assert len(result.metadata["health"]) == 2 and all(r["finite"] for r in result.metadata["health"])
