"""ONNX export: the transformer and text encoder match torch, an exported folder draws the
pipeline's image for the same noise, and a failed export leaves nothing behind."""

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from fractalflow.cli import main
from fractalflow.export import onnx as onnx_export
from fractalflow.export.onnx import MANIFEST_FILE, TEXT_ENCODER_FILE, TRANSFORMER_FILE, ExportSettings, export_onnx
from fractalflow.export.runtime import OnnxGenerator, browser_noise, time_grid
from fractalflow.flow import samplers
from fractalflow.flow.refine import seeded_noise
from fractalflow.generation import GenerationConfig
from fractalflow.pipeline import FractalFlowPipeline

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model exported through the CLI, once for this module."""
    folder = tmp_path_factory.mktemp("onnx") / "default"
    assert main(["export", "--format", "onnx", "--out", str(folder)]) == 0
    return folder


def test_export_writes_both_graphs_with_parity_to_torch_and_the_settings(exported):
    manifest = json.loads((exported / MANIFEST_FILE).read_text())
    assert manifest["size"] == 64 and manifest["max_length"] == 32
    assert "folder" not in manifest  # the staging folder it was written in is no path of this machine's to publish
    # parity was checked on a batch and prompt length other than the traced ones (dynamic axes)
    assert manifest["parity"]["transformer"] < 1e-4
    assert manifest["parity"]["text_encoder"] < 1e-4
    for name in (TRANSFORMER_FILE, TEXT_ENCODER_FILE, "tokenizer.json", "config.json", "generation_config.json"):
        assert manifest["files"][name] == (exported / name).stat().st_size > 0
    assert exported.stat().st_mode & stat.S_IROTH  # servable as static files


def test_the_exported_folder_draws_the_pipelines_image_for_the_same_noise(exported):
    pipeline = FractalFlowPipeline.default(device="cpu")
    prompts = ["red heart", "bicycle icon, tabler style, wheel"]  # two prompt lengths in one batch
    seeds = [3, 4]
    expected = np.stack([np.asarray(image) for image in pipeline.generate(prompts, seeds=seeds, steps=8).images])
    noise = seeded_noise(seeds, 3, "cpu")(64).numpy()
    got = OnnxGenerator(exported).generate(prompts, noise, steps=8)
    assert got.shape == expected.shape == (2, 64, 64, 3)
    difference = np.abs(got.astype(int) - expected.astype(int))
    assert difference.max() <= 2  # rounding of fp32 differences to 8-bit levels
    assert difference.mean() < 0.05
    assert np.abs(got[0].astype(int) - got[1].astype(int)).mean() > 10  # the prompts draw different images


def test_an_export_samples_on_its_models_time_grid(exported, tmp_path):
    np.testing.assert_array_equal(time_grid(20, 3.0), samplers.time_grid(20, 3.0).numpy())  # float32 alike
    folders = {}
    for shift in (1.0, 3.0):
        folders[shift] = tmp_path / f"shift-{shift:g}"
        shutil.copytree(exported, folders[shift])
        GenerationConfig.for_model(folders[shift]).merged(time_shift=shift).save(folders[shift])
    pipeline = FractalFlowPipeline.default(device="cpu")
    expected = np.asarray(pipeline.generate("red heart", seed=3, steps=8, time_shift=3.0).images[0], dtype=int)
    noise = seeded_noise([3], 3, "cpu")(64).numpy()
    got = OnnxGenerator(folders[3.0]).generate(["red heart"], noise, steps=8)[0].astype(int)
    even = OnnxGenerator(folders[1.0]).generate(["red heart"], noise, steps=8)[0].astype(int)
    assert np.abs(got - expected).max() <= 2 and np.abs(got - expected).mean() < 0.05
    assert np.abs(got - even).mean() > 1  # the folder's shift is used


@pytest.mark.parametrize("jitter", [0, 3])
def test_an_export_jitters_the_grid_as_the_pipeline_does(exported, tmp_path, jitter):
    folder = tmp_path / "jittered"
    shutil.copytree(exported, folder)
    GenerationConfig.for_model(folder).merged(grid_jitter=jitter).save(folder)
    pipeline = FractalFlowPipeline.default(device="cpu")
    expected = np.asarray(pipeline.generate("red heart", seed=3, steps=8, grid_jitter=jitter).images[0], dtype=int)
    noise = seeded_noise([3], 3, "cpu")(64).numpy()
    got = OnnxGenerator(folder).generate(["red heart"], noise, steps=8)[0].astype(int)
    assert np.abs(got - expected).max() <= 2 and np.abs(got - expected).mean() < 0.05


@pytest.mark.parametrize("sampler", ["euler", "ab2"])
def test_an_export_samples_with_its_models_sampler_as_the_pipeline_does(exported, tmp_path, sampler):
    folder = tmp_path / sampler
    shutil.copytree(exported, folder)
    GenerationConfig.for_model(folder).merged(sampler=sampler).save(folder)
    pipeline = FractalFlowPipeline.default(device="cpu")
    expected = np.asarray(pipeline.generate("red heart", seed=3, steps=8, sampler=sampler).images[0], dtype=int)
    other_sampler = "ab2" if sampler == "euler" else "euler"
    other = np.asarray(pipeline.generate("red heart", seed=3, steps=8, sampler=other_sampler).images[0], dtype=int)
    noise = seeded_noise([3], 3, "cpu")(64).numpy()
    got = OnnxGenerator(folder).generate(["red heart"], noise, steps=8)[0].astype(int)
    assert np.abs(got - expected).max() <= 2 and np.abs(got - expected).mean() < 0.05
    assert np.abs(got - other).mean() > 1  # the folder's sampler is used


def test_an_export_whose_sampler_the_runtime_lacks_is_refused_in_one_line(exported, tmp_path):
    folder = tmp_path / "heun"
    shutil.copytree(exported, folder)
    GenerationConfig.for_model(folder).merged(sampler="heun").save(folder)
    with pytest.raises(ValueError, match="sampler 'heun' is not in the ONNX runtime; it has \\('euler', 'ab2'\\)"):
        OnnxGenerator(folder)


def test_a_failed_export_keeps_the_old_folder_and_leaves_no_partial_files(tmp_path, monkeypatch):
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("earlier export")

    def fail_half_way(pipeline, model, out, size, settings):
        (out / TRANSFORMER_FILE).write_bytes(b"partial")
        raise RuntimeError("ONNX parity failed: transformer differs from torch by 1e+00 (allowed 1e-03)")

    monkeypatch.setattr(onnx_export, "_write", fail_half_way)
    with pytest.raises(RuntimeError, match="parity failed"):
        export_onnx(FractalFlowPipeline.default(device="cpu"), target)
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_export_refuses_a_size_the_model_cannot_take(tmp_path):
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(FractalFlowPipeline.default(device="cpu"), tmp_path / "out", ExportSettings(size=40))
    assert not (tmp_path / "out").exists()


def test_export_cli_rejects_a_negative_size_in_one_line(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "out"), "--size", "-8"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--size -8" in error


def test_browser_noise_is_the_web_uis_noise_for_the_same_seed():
    """web/tests/sampler.test.ts checks the browser's seededNoise against the same fixture."""
    fixture = json.loads((Path(__file__).parents[1] / "web/tests/fixtures/browser-noise.json").read_text())
    for seed, values in fixture["seeds"].items():
        assert browser_noise(int(seed), (len(values),)).tolist() == values
    noise = browser_noise(3, (3, 64, 64))
    assert noise.dtype == np.float32 and abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
