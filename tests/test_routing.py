"""A/B routing over registered models: weighted, sticky per client, aliases followed without
a restart, loaded lazily within a budget, and the variant in every job's metadata."""

import threading
import time

import pytest
from fastapi.testclient import TestClient

from fractalflow.inference import InferenceEngine
from fractalflow.serving.app import create_app
from fractalflow.serving.config import ServerConfig
from fractalflow.serving.registry import ModelRegistry
from fractalflow.serving.routing import EngineRouter


@pytest.fixture
def registry(tmp_path, tiny_model_folder):
    registry = ModelRegistry(tmp_path / "reg")
    for _ in range(3):
        registry.register(tiny_model_folder, "digits")
    registry.alias("production", "digits:1")
    registry.alias("canary", "digits:2")
    return registry


class FakeEngine:
    def __init__(self, folder):
        self.folder, self.closed = folder, False

    def close(self):
        self.closed = True


def test_the_split_follows_the_weights_and_sticks_to_each_client(registry):
    router = EngineRouter(registry=registry, routes={"production": 8, "canary": 2}, make_engine=FakeEngine)
    chosen = [router.choose(client_id=f"client-{i}") for i in range(4000)]
    assert abs(chosen.count("canary") / len(chosen) - 0.2) < 0.02
    assert all(router.choose(client_id=f"client-{i}") == chosen[i] for i in range(200))  # sticky
    assert router.choose("canary", client_id="client-0") == "canary"  # asked for by name
    with pytest.raises(ValueError, match="model='digits:3': not served; choose one of \\['canary', 'production'\\]"):
        router.choose("digits:3")


def test_engines_load_on_first_use_within_the_budget_and_follow_an_alias(registry):
    router = EngineRouter(
        registry=registry, routes={"production": 1, "canary": 1}, make_engine=FakeEngine, max_loaded=1
    )
    assert router.loaded() == []
    version, first = router.engine("production")
    assert version == "digits:1" and first.folder.name == "v1"
    router.engine("canary")
    assert router.loaded() == ["digits:2"]
    time.sleep(0.1)
    assert first.closed  # unloaded beyond the budget
    registry.alias("production", "digits:3")
    assert router.engine("production")[0] == "digits:3"  # the alias moved: no restart


def test_routes_must_resolve_and_weigh_something(registry):
    with pytest.raises(ValueError, match="no model 'nightly'"):
        EngineRouter(registry=registry, routes={"nightly": 1}, make_engine=FakeEngine)
    with pytest.raises(ValueError, match="invalid ServerConfig: routes need a registry folder"):
        ServerConfig(routes={"production": 1})


def test_an_alias_switch_under_load_fails_no_job_and_each_job_names_its_variant(registry):
    config = ServerConfig(
        registry=str(registry.root), routes={"production": 3, "canary": 1}, profile="cpu", max_queue=64
    )
    finished = []
    with TestClient(create_app(config)) as client:

        def submit(i):
            headers = {"X-Client-Id": f"user-{i}"}
            return client.post("/v1/generate", json={"prompt": "seven", "steps": 2}, headers=headers).json()

        jobs = [submit(i) for i in range(8)]
        switch = threading.Thread(target=registry.alias, args=("production", "digits:3"))
        switch.start()
        jobs += [submit(i) for i in range(8, 16)]
        switch.join()
        jobs += [submit(i) for i in range(16, 20)]
        for job in jobs:
            while (info := client.get(job["job_url"]).json())["state"] in ("queued", "running"):
                time.sleep(0.01)
            finished.append(info)
        asked = client.post("/v1/generate", json={"prompt": "one", "steps": 1, "model": "canary"}).json()
        while (canary := client.get(asked["job_url"]).json())["state"] in ("queued", "running"):
            time.sleep(0.01)
        refused = client.post("/v1/generate", json={"prompt": "one", "model": "digits:1"})
        metrics = client.get("/metrics").text
    assert [info["state"] for info in finished] == ["done"] * 20
    variants = {info["metadata"]["variant"] for info in finished}
    assert variants == {"production", "canary"}
    late = [info["metadata"] for info in finished[16:] if info["metadata"]["variant"] == "production"]
    assert late and all(m["model_version"] == "digits:3" for m in late)
    assert canary["metadata"]["variant"] == "canary" and canary["metadata"]["model_version"] == "digits:2"
    assert refused.status_code == 422
    assert 'fractalflow_variant_jobs_total{state="done",variant="canary"}' in metrics
    assert 'fractalflow_variant_job_seconds_count{variant="production"}' in metrics
    assert 'fractalflow_variant_flagged_images_total{flag="out_of_range",variant="canary"}' in metrics  # random


def test_a_single_model_server_names_its_jobs_default(tiny_model_folder):
    from fractalflow.inference.profiles import PROFILES

    engine = InferenceEngine(tiny_model_folder, profile=PROFILES["cpu"])
    with TestClient(create_app(ServerConfig(), engine)) as client:
        job = client.post("/v1/generate", json={"prompt": "one", "steps": 1}).json()
        while (info := client.get(job["job_url"]).json())["state"] in ("queued", "running"):
            time.sleep(0.01)
    assert info["metadata"]["variant"] == "default" and info["metadata"]["model_version"] == ""
