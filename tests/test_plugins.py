"""Plugins: entry points of the installed example package, explicit registration, name
clashes, a failing plugin isolated to its own call, and the plugins chosen by name."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import fractalflow.plugins.core as core
from fractalflow import FractalFlowPipeline, GenerationConfig
from fractalflow.cli import main
from fractalflow.inference import GenerationRequest, InferenceEngine
from fractalflow.inference.profiles import PROFILES
from fractalflow.plugins import Plugin, PluginError, PluginRegistry, registry
from fractalflow.serving.app import create_app
from fractalflow.serving.config import ServerConfig

EXAMPLE = "fractalflow-example-plugins"


@pytest.fixture
def own_registry(monkeypatch):
    """A registry of this test's own (the built-ins and installed entry points, as the real one)."""
    fresh = PluginRegistry()
    for plugin in core.built_in_plugins():
        fresh.register(plugin, core.BUILT_IN)
    fresh.load_entry_points()
    monkeypatch.setattr(core, "_REGISTRY", fresh)
    return fresh


def test_the_installed_example_package_is_found_through_its_entry_points():
    found = {(p.kind, p.name): p for p in registry().plugins()}
    assert found[("sampler", "midpoint")].distribution == EXAMPLE
    assert found[("postprocess", "palette16")].version == "0.1.0"
    assert found[("sampler", "euler")].distribution == "fractalflow"  # built-ins are registered alike
    assert registry().load_errors == []


def test_plugins_are_chosen_by_name_in_generate(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    euler = pipeline.generate("three", steps=4, seed=1).images[0]
    midpoint = pipeline.generate("three", steps=4, seed=1, sampler="midpoint")
    assert midpoint.metadata["config"]["sampler"] == "midpoint"
    assert not np.array_equal(np.asarray(euler), np.asarray(midpoint.images[0]))


def test_the_palette_postprocessor_leaves_only_palette_colours():
    from fractalflow_example_plugins import PALETTE

    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    snapped = registry().get("postprocess", "palette16")(images)
    colours = torch.round((snapped + 1) * 127.5).permute(0, 2, 3, 1).reshape(-1, 3)
    assert all(any(torch.equal(colour, p) for p in PALETTE) for colour in colours)


def test_a_name_registered_twice_names_both_distributions(own_registry):
    clash = Plugin("sampler", "midpoint", "9.9", lambda v, x, t, tn: (x, x))
    with pytest.raises(PluginError, match=f"registered twice: by {EXAMPLE} \\(0.1.0\\) and by other-dist \\(9.9\\)"):
        own_registry.register(clash, "other-dist")


def test_a_broken_entry_point_is_reported_and_the_others_still_load(monkeypatch):
    def broken_load():
        raise ImportError("no module named nowhere")

    points = [
        SimpleNamespace(name="bad", value="nowhere:X", dist=SimpleNamespace(name="broken-dist"), load=broken_load),
        SimpleNamespace(
            name="good",
            value="x:Y",
            dist=SimpleNamespace(name="good-dist"),
            load=lambda: Plugin("prompt", "upper", "1", str.upper),
        ),
    ]
    monkeypatch.setattr(core, "entry_points", lambda group: points)
    fresh = PluginRegistry()
    fresh.load_entry_points()
    assert fresh.names("prompt") == ["upper"] and fresh.get("prompt", "upper").distribution == "good-dist"
    assert fresh.load_errors == ["entry point 'bad' of broken-dist: no module named nowhere"]


def test_a_plugin_that_raises_fails_its_own_request_and_the_engine_goes_on(own_registry, tiny_model_folder):
    def explode(images):
        raise RuntimeError("out of ink")

    own_registry.register(Plugin("postprocess", "explode", "1", explode))
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    with InferenceEngine(profile=replace(PROFILES["cpu"], batch_window_ms=0.0), pipeline=pipeline) as engine:
        bad = engine.submit(GenerationRequest("one", config=GenerationConfig(steps=2, postprocess=("explode",))))
        with pytest.raises(PluginError, match="postprocess plugin 'explode' 1 \\(explicit register\\(\\)\\) failed: "
                           "RuntimeError: out of ink"):  # fmt: skip
            bad.result(timeout=60)
        good = engine.submit(GenerationRequest("two", config=GenerationConfig(steps=2)))
        assert len(good.result(timeout=60).images) == 1


def test_a_plugin_that_raises_fails_its_job_and_the_server_stays_healthy(own_registry, tiny_model_folder):
    own_registry.register(Plugin("postprocess", "explode", "1", lambda images: 1 / 0))
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    engine = InferenceEngine(profile=replace(PROFILES["cpu"], batch_window_ms=0.0), pipeline=pipeline)
    with TestClient(create_app(ServerConfig(), engine)) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequestWithinLimits"]
        assert set(schema["properties"]["postprocess"]["items"]["enum"]) == {"explode", "palette16"}
        jobs = [
            client.post("/v1/generate", json={"prompt": "one", "steps": 2, "postprocess": names}).json()
            for names in (["explode"], ["palette16"])
        ]
        states = []
        for job in jobs:
            while (info := client.get(job["job_url"]).json())["state"] in ("queued", "running"):
                pass
            states.append((info["state"], info["error"]))
        assert client.get("/healthz").json()["status"] == "ok"
    assert (
        states[0][0] == "error"
        and "postprocess plugin 'explode'" in states[0][1]
        and "ZeroDivisionError" in states[0][1]
    )
    assert states[1] == ("done", None)


def test_a_plugin_returning_another_shape_is_refused(own_registry, tiny_model_folder):
    own_registry.register(Plugin("postprocess", "crop", "1", lambda images: images[..., :4, :4]))
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    with pytest.raises(PluginError, match="postprocess plugin 'crop' returned \\(1, 1, 4, 4\\), not images of shape"):
        pipeline.generate("one", steps=1, size=16, postprocess=("crop",))


def test_plugins_list_and_generate_by_name_on_the_command_line(tiny_model_folder, tmp_path, capsys):
    assert main(["plugins", "list"]) == 0
    listing = capsys.readouterr().out
    assert "midpoint" in listing and EXAMPLE in listing and "palette16" in listing
    out = tmp_path / "p.png"
    argv = ["generate", "three", "--model", str(tiny_model_folder), "--steps", "2", "-o", str(out)]
    assert main([*argv, "--sampler", "midpoint", "--postprocess", "palette16"]) == 0 and out.is_file()
    assert main([*argv, "--sampler", "rk9"]) == 2
    assert "unknown sampler 'rk9'; choose one of ['ab2', 'euler', 'heun', 'midpoint']" in capsys.readouterr().err


def test_a_plugin_must_name_a_known_kind_and_be_callable():
    with pytest.raises(PluginError, match="kind 'colour' is not one of"):
        Plugin("colour", "x", "1", print)
    with pytest.raises(PluginError, match="function is not callable"):
        Plugin("sampler", "x", "1", 42)
