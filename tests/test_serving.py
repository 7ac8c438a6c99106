"""The HTTP service: jobs, the event stream, limits, cancel, auth, metrics, shutdown."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fractalflow import FractalFlowPipeline, GenerationConfig
from fractalflow.inference import PROFILES, InferenceEngine
from fractalflow.model.adaptive import CacheSettings
from fractalflow.model.adaptive_policies import AdaptivePolicies
from fractalflow.serving import ServerConfig, create_app
from fractalflow.serving.jobs import Job
from fractalflow.serving.schemas import GenerateRequest


@pytest.fixture
def pipeline(tiny_model_folder):
    return FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")


def engine_for(pipeline, **profile):
    return InferenceEngine(profile=replace(PROFILES["cpu"], batch_window_ms=0.0, **profile), pipeline=pipeline)


def gate(pipeline) -> threading.Event:
    """Hold every generation of ``pipeline`` until the returned event is set."""
    opened, generate = threading.Event(), pipeline.generate

    def held(*args, **kwargs):
        assert opened.wait(30), "the test never opened the gate"
        return generate(*args, **kwargs)

    pipeline.generate = held
    return opened


def events_of(client, job_id, headers=None, **params):
    """Every server-sent event of a job, parsed, in order, until its final one."""
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params=params, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


def png_from_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_a_job_streams_queued_stage_steps_and_done_then_serves_its_image(pipeline):
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        created = client.post("/v1/generate", json={"prompt": "seven", "resolution": "high", "steps": 4, "seed": 5})
        assert created.status_code == 202
        job = created.json()
        events = events_of(client, job["id"])
        info = client.get(job["job_url"]).json()
        image = client.get(info["images"][0])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "done"
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, steps[0]["total"] + 1))
    assert [e["stage"] for e in events if e["type"] == "stage"] == ["8px", "16px", "32px"]
    # steps sent live carry a preview; those replayed to a late subscriber, null (one kept per job)
    assert all(png_from_data_url(e["preview"]).size[0] <= 64 for e in steps if e["preview"] is not None)
    assert [e["id"] for e in events] == list(range(len(events)))
    assert info["state"] == "done" and info["request"]["seed"] == 5 and info["metadata"]["seeds"] == [5]
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(image.content))
    assert picture.size == (32, 32) and json.loads(picture.text["fractalflow"])["job"] == job["id"]
    # the same seed through the pipeline directly gives the same pixels
    direct = pipeline.generate("seven", resolution="high", steps=4, seed=5).images[0]
    assert np.array_equal(np.asarray(picture), np.asarray(direct))


def test_adaptive_jobs_say_how_many_blocks_ran_and_default_to_the_profile(pipeline):
    pipeline.adaptive_policies = AdaptivePolicies({2.0: CacheSettings(every=3)}, auto=2.0)
    with TestClient(create_app(ServerConfig(), engine_for(pipeline, adaptive="auto"))) as client:
        jobs = {
            asked: client.post("/v1/generate", json={"prompt": "one", "steps": 6, "resolution": 16, **body}).json()
            for asked, body in (("profile", {}), ("off", {"adaptive": "off"}))
        }
        events = {asked: events_of(client, job["id"]) for asked, job in jobs.items()}
    for asked, expected_target in (("profile", 2.0), ("off", None)):
        steps = [e for e in events[asked] if e["type"] == "step"]
        metadata = events[asked][-1]["metadata"]["adaptive"]
        assert metadata["target"] == expected_target
        assert steps[-1]["blocks_run"] == metadata["blocks_run"]
    assert (
        events["profile"][-1]["metadata"]["adaptive"]["blocks_run"]
        < events["off"][-1]["metadata"]["adaptive"]["blocks_run"]
    )


def test_reconnecting_with_last_event_id_resumes_after_it(pipeline):
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        job = client.post("/v1/generate", json={"prompt": "one", "steps": 3}).json()
        everything = events_of(client, job["id"])
        with client.stream("GET", job["events_url"], headers={"Last-Event-ID": "2"}) as response:
            rest = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    without_previews = [{**e, "preview": None} if "preview" in e else e for e in everything]
    assert [{**e, "preview": None} if "preview" in e else e for e in rest] == without_previews[3:]


def test_a_job_keeps_one_preview_at_most_and_none_once_finished():
    loop = asyncio.new_event_loop()
    job = Job(GenerateRequest(prompt="one"), seed=0, loop=loop)
    sent = []
    for step in range(5):
        job.publish("step", stage="64px", step=step, total=5, elapsed=0.0, preview=f"data:{step}")
        sent.append(job.events[-1])
        assert [e["preview"] for e in job.events if e["type"] == "step"] == [None] * step + [f"data:{step}"]
    job.publish("done", images=[], metadata={})
    loop.close()
    assert all(e.get("preview") is None for e in job.events)
    assert [e["preview"] for e in sent] == [f"data:{step}" for step in range(5)]  # what was sent stays intact


@pytest.mark.parametrize(
    "body,field,message",
    [
        ({"prompt": "one", "steps": 101}, "steps", "less than or equal to 100"),
        ({"prompt": "one", "resolution": "huge"}, "resolution", "should be 'preview', 'standard' or 'high'"),
        ({"prompt": "one", "resolution": 18}, "resolution", "multiple of 4"),
        ({"prompt": "one", "resolution": 36}, "resolution", "less than or equal to 32"),
        ({"prompt": "one", "resolution": "ultra"}, "resolution", "should be 'preview', 'standard' or 'high'"),
        ({"prompt": "one " * 20}, "prompt", "at most 50 characters"),
        ({"prompt": "one", "num_images": 3}, "num_images", "less than or equal to 2"),
        ({"prompt": "one", "guidance": 30}, "guidance", "less than or equal to 20"),
        ({"prompt": "   "}, "prompt", "should match pattern"),
        ({"prompt": "\x1e\t"}, "prompt", "should match pattern"),  # blank to str.strip(), not to a plain \S
        ({"prompt": "one", "steps": 0}, "steps", "greater than or equal to 1"),
        ({"prompt": "one", "steps": True}, "body", "steps=true: a number or a string is expected"),
        ({"prompt": "one", "colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"prompt": "one", "adaptive": 9}, "adaptive", "less than or equal to 8"),
        ({"prompt": "one", "adaptive": "fast"}, "adaptive", "Input should be 'off' or 'auto'"),
    ],
)
def test_requests_over_the_limits_get_422_saying_what_is_allowed(pipeline, body, field, message):
    config = ServerConfig(max_size=32, max_images=2, max_prompt_length=50)
    with TestClient(create_app(config, engine_for(pipeline))) as client:
        response = client.post("/v1/generate", json=body)
        metrics = client.get("/metrics").text
        schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequestWithinLimits"]
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert all(problem["loc"][min(1, len(problem["loc"]) - 1)] == field for problem in problems), problems
    assert any(re.search(message, problem["msg"]) for problem in problems), problems
    assert 'fractalflow_refused_requests_total{status="422"} 1.0' in metrics
    # the schema states the same limits
    assert schema["properties"]["steps"]["maximum"] == 100 and schema["properties"]["num_images"]["maximum"] == 2
    assert schema["properties"]["prompt"]["maxLength"] == 50


@pytest.mark.parametrize(
    "raw,field,message",
    [
        ('{"prompt": "one", "guidance": NaN}', "guidance", "finite number"),
        ('{"prompt": "one", "guidance": 1e999}', "guidance", "finite number"),
        ('{"prompt": "one", "early_stop": Infinity}', "early_stop", "finite number"),
        ('{"prompt": "one", "colour": -Infinity}', "colour", "Extra inputs are not permitted"),
        ('{"prompt": "a \\ud800 b"}', "prompt", "valid string"),  # echoed back escaped
    ],
)
def test_inputs_json_cannot_carry_get_a_422_not_a_500(pipeline, raw, field, message):
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        response = client.post("/v1/generate", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"][-1] == field and message in problem["msg"], problem


def test_bodies_over_the_limit_get_413_before_they_are_read(pipeline):
    config = ServerConfig(max_body_bytes=1000)
    padded = json.dumps({"prompt": "one", "steps": 2, "pad": "x" * 2000})

    def chunks():
        yield padded[:600].encode()
        yield padded[600:].encode()  # no Content-Length: cut off while it streams in

    with TestClient(create_app(config, engine_for(pipeline))) as client:
        declared = client.post("/v1/generate", content=padded, headers={"Content-Type": "application/json"})
        streamed = client.post("/v1/generate", content=chunks(), headers={"Content-Type": "application/json"})
        small = client.post("/v1/generate", json={"prompt": "one", "steps": 2})
        metrics = client.get("/metrics").text
    assert declared.status_code == 413 and "over 1000 bytes" in declared.json()["detail"]
    assert streamed.status_code == 413 and "over 1000 bytes" in streamed.json()["detail"]
    assert small.status_code == 202
    assert 'fractalflow_refused_requests_total{status="413"} 2.0' in metrics


def test_a_full_queue_answers_429_with_retry_after(pipeline):
    opened = gate(pipeline)
    with TestClient(create_app(ServerConfig(max_queue=2), engine_for(pipeline))) as client:
        accepted = [client.post("/v1/generate", json={"prompt": "one", "steps": 2}) for _ in range(2)]
        refused = client.post("/v1/generate", json={"prompt": "one", "steps": 2})
        opened.set()
        finished = [events_of(client, r.json()["id"])[-1]["type"] for r in accepted]
        after = client.post("/v1/generate", json={"prompt": "one", "steps": 2})
    assert [r.status_code for r in accepted] == [202, 202]
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "queue is full" in refused.json()["detail"]
    assert finished == ["done", "done"] and after.status_code == 202  # room again once jobs finish


def test_cancel_a_running_and_a_queued_job_then_the_next_one_still_runs(pipeline):
    opened = gate(pipeline)
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        running = client.post("/v1/generate", json={"prompt": "one", "steps": 5}).json()
        queued = client.post("/v1/generate", json={"prompt": "two", "steps": 6}).json()
        cancelled = [client.delete(f"/v1/jobs/{job['id']}") for job in (running, queued)]
        opened.set()
        streams = [events_of(client, job["id"]) for job in (running, queued)]
        later = client.post("/v1/generate", json={"prompt": "three", "steps": 2}).json()
        later_events = events_of(client, later["id"])
        again = client.delete(f"/v1/jobs/{later['id']}")
        states = [client.get(f"/v1/jobs/{job['id']}").json()["state"] for job in (running, queued, later)]
        metrics = client.get("/metrics").text
    assert [r.status_code for r in cancelled] == [200, 200]
    assert [r.json()["state"] for r in cancelled] == ["cancelled", "cancelled"]
    assert [[e["type"] for e in s] for s in streams] == [["queued", "cancelled"], ["queued", "cancelled"]]
    assert later_events[-1]["type"] == "done"
    assert again.status_code == 409 and "already finished (done)" in again.json()["detail"]
    assert states == ["cancelled", "cancelled", "done"]
    assert 'fractalflow_jobs_total{state="cancelled"} 2.0' in metrics
    assert 'fractalflow_jobs_total{state="done"} 1.0' in metrics


def test_unknown_jobs_and_images_are_404(pipeline):
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        assert client.get("/v1/jobs/nope").status_code == 404
        assert client.delete("/v1/jobs/nope").status_code == 404
        assert "no image 'nope'" in client.get("/v1/images/nope.png").json()["detail"]


def test_an_api_key_in_a_header_guards_v1_docs_and_metrics_but_never_rides_in_a_url(pipeline):
    key = {"X-API-Key": "s3cret"}
    with TestClient(create_app(ServerConfig(api_key="s3cret"), engine_for(pipeline))) as client:
        refused = {path: client.get(path).status_code for path in ("/v1/models", "/metrics", "/docs", "/openapi.json")}
        in_query = client.get("/v1/models", params={"api_key": "s3cret"})
        wrong = client.get("/v1/models", headers={"X-API-Key": "s3creT"})
        bearer = client.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        allowed = {path: client.get(path, headers=key).status_code for path in ("/metrics", "/docs", "/openapi.json")}
        job = client.post("/v1/generate", json={"prompt": "one", "steps": 2}, headers=key)
        events = events_of(client, job.json()["id"], headers=key)
        (url,) = events[-1]["images"]
        signed = client.get(url)  # as an <img> would: no header
        tampered = client.get(url.replace("signature=", "signature=0"))
        unsigned = client.get(url.split("?")[0])
        health = client.get("/healthz")
    assert set(refused.values()) == {401} and in_query.status_code == 401 and wrong.status_code == 401
    assert "X-API-Key or Authorization: Bearer" in in_query.json()["detail"]
    assert bearer.status_code == 200 and set(allowed.values()) == {200}
    assert job.status_code == 202 and events[-1]["type"] == "done"
    assert "s3cret" not in url and "expires=" in url and signed.status_code == 200
    assert signed.headers["content-type"] == "image/png"
    assert tampered.status_code == 401 and unsigned.status_code == 401
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_signed_image_urls_expire_and_docs_and_metrics_can_be_opened(pipeline):
    config = ServerConfig(api_key="s3cret", image_url_seconds=1, open_docs_and_metrics=True)
    with TestClient(create_app(config, engine_for(pipeline))) as client:
        opened = [client.get(path).status_code for path in ("/metrics", "/docs", "/openapi.json")]
        job = client.post("/v1/generate", json={"prompt": "one", "steps": 2}, headers={"X-API-Key": "s3cret"})
        (url,) = events_of(client, job.json()["id"], headers={"X-API-Key": "s3cret"})[-1]["images"]
        time.sleep(2.1)
        expired = client.get(url)
        models = client.get("/v1/models")
    assert opened == [200, 200, 200] and expired.status_code == 401 and models.status_code == 401


def test_cors_allows_only_the_configured_origins(pipeline):
    config = ServerConfig(cors_origins=("http://app.example",))
    with TestClient(create_app(config, engine_for(pipeline))) as client:
        allowed = client.get("/healthz", headers={"Origin": "http://app.example"})
        other = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_models_lists_the_served_model_with_its_resolutions(pipeline):
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        (model,) = client.get("/v1/models").json()
        schema = client.get("/openapi.json").json()
    assert model["resolutions"] == {"preview": 4, "standard": 16, "high": 32, "ultra": 64}
    assert model["sample_size"] == 16 and model["parameters"] == sum(p.numel() for p in pipeline.model.parameters())
    assert {"/v1/generate", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/models"} <= set(schema["paths"])
    paths = schema["paths"]
    assert {"401", "404", "422", "429"} <= set(paths["/v1/generate"]["post"]["responses"])
    assert "409" in paths["/v1/jobs/{job_id}"]["delete"]["responses"]
    assert list(paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]) == ["text/event-stream"]


def test_the_server_shows_no_path_of_its_files(tiny_model_folder):
    config = ServerConfig(model=str(tiny_model_folder))
    with TestClient(create_app(config, InferenceEngine(str(tiny_model_folder), profile="cpu"))) as client:
        (model,) = client.get("/v1/models").json()
        job = client.post("/v1/generate", json={"prompt": "one", "steps": 2}).json()
        (url,) = events_of(client, job["id"])[-1]["images"]
        png = Image.open(io.BytesIO(client.get(url).content))
        bogus = client.get(job["events_url"], headers={"Last-Event-ID": "-5"})
    shown = json.dumps(model) + png.text["fractalflow"]
    assert model["id"] == model["source"] == "tiny-model" and str(tiny_model_folder.parent) not in shown
    assert bogus.status_code == 422


def test_metrics_count_jobs_and_time_them(pipeline):
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        for _ in range(2):
            events_of(client, client.post("/v1/generate", json={"prompt": "one", "steps": 2}).json()["id"])
        text = client.get("/metrics").text
    assert 'fractalflow_jobs_total{state="done"} 2.0' in text
    assert "fractalflow_job_seconds_count 2.0" in text
    assert "fractalflow_first_preview_seconds_count 2.0" in text
    assert "fractalflow_queue_length 0.0" in text


def test_shutdown_finishes_the_running_job_and_cancels_the_waiting_one(pipeline):
    opened = gate(pipeline)
    app = create_app(ServerConfig(), engine_for(pipeline))
    manager = app.state.manager
    with TestClient(app) as client:
        running = client.post("/v1/generate", json={"prompt": "one", "steps": 3}).json()
        waiting = client.post("/v1/generate", json={"prompt": "two", "steps": 4}).json()
        deadline = time.monotonic() + 10  # on a loaded machine the worker may not have taken it yet
        while manager.get(running["id"]).state != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        threading.Timer(0.5, opened.set).start()  # the running job may finish only once shutdown has begun
    assert manager.get(running["id"]).state == "done"
    assert manager.get(waiting["id"]).state == "cancelled"
    assert [e["type"] for e in manager.get(waiting["id"]).events] == ["queued", "cancelled"]


def start_server(tmp_path, **settings):
    """``fractalflow serve`` in a subprocess with a ServerConfig of ``settings`` on a free port,
    once it answers /healthz: (process, base URL, health)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "server.json"
    ServerConfig(port=port, **settings).save_json(config)
    server = subprocess.Popen(
        [sys.executable, "-m", "fractalflow.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            return server, base, json.load(urllib.request.urlopen(f"{base}/healthz", timeout=1))
        except OSError:
            time.sleep(0.1)
    server.kill()
    pytest.fail("the server did not come up")


def test_fractalflow_serve_answers_over_http_and_stops_cleanly_on_sigterm(tiny_model_folder, tmp_path):
    server, base, health = start_server(tmp_path, model=str(tiny_model_folder), profile="cpu", max_steps=8)
    try:
        body = json.dumps({"prompt": "four", "steps": 9}).encode()
        post = urllib.request.Request(f"{base}/v1/generate", body, {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=10)
        assert refused.value.code == 422  # the limit from the config file holds
        body = json.dumps({"prompt": "four", "steps": 3}).encode()
        post = urllib.request.Request(f"{base}/v1/generate", body, {"Content-Type": "application/json"})
        job = json.load(urllib.request.urlopen(post, timeout=10))
        stream = urllib.request.urlopen(f"{base}{job['events_url']}", timeout=30).read().decode()
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert health["status"] == "ok"
    assert "event: done" in stream and "event: step" in stream
    # uvicorn re-raises the signal once its graceful shutdown is complete
    assert server.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output


def test_a_cancelled_job_stays_cancelled_when_a_step_races_the_cancel():
    loop = asyncio.new_event_loop()
    job = Job(GenerateRequest(prompt="one"), seed=0, loop=loop)
    assert job.finish("cancelled")
    job.publish("cancelled")
    job.mark_running()  # the worker's first step arrives after the cancel
    job.publish("step", stage="64px", step=1, total=5, elapsed=0.0, preview="data:")
    loop.close()
    assert job.state == "cancelled" and [e["type"] for e in job.events] == ["cancelled"]
    assert not job.finish("cancelled")  # finishing again is refused, so it is counted once


def test_sigterm_ends_every_followed_stream_with_a_final_event(tiny_model_folder, tmp_path):
    server, base, _ = start_server(tmp_path, model=str(tiny_model_folder), profile="cpu", shutdown_seconds=3)
    body = json.dumps({"prompt": "four", "steps": 100, "resolution": "ultra"}).encode()
    post = urllib.request.Request(f"{base}/v1/generate", body, {"Content-Type": "application/json"})
    jobs = [json.load(urllib.request.urlopen(post, timeout=10)) for _ in range(12)]
    streams: dict[str, str] = {}

    def follow(job):
        streams[job["id"]] = urllib.request.urlopen(f"{base}{job['events_url']}", timeout=30).read().decode()

    followers = [threading.Thread(target=follow, args=(job,)) for job in jobs]
    for thread in followers:
        thread.start()
    time.sleep(1.0)
    stopped = time.monotonic()
    server.send_signal(signal.SIGTERM)
    for thread in followers:
        thread.join(timeout=30)
    server.communicate(timeout=30)
    finals = [re.findall(r"^event: (\w+)", streams[job["id"]], re.M)[-1] for job in jobs]
    assert set(finals) <= {"done", "cancelled"} and "cancelled" in finals, finals
    assert time.monotonic() - stopped < 3 + 5  # within shutdown_seconds, plus start-up slack


def fake_export(folder):
    """A folder with the files of an ONNX export (their contents do not matter to the server)."""
    folder.mkdir()
    for name in ("onnx_export.json", "generation_config.json", "tokenizer.json"):
        (folder / name).write_text('{"size": 64}')
    for name in ("transformer.onnx", "text_encoder.onnx"):
        (folder / name).write_bytes(b"onnx-" + name.encode())
    (folder / "secret.txt").write_text("not for browsers")
    return folder


def test_the_browser_model_serves_only_its_export_files_behind_the_api_key(pipeline, tmp_path):
    folder = fake_export(tmp_path / "export")
    config = ServerConfig(api_key="s3cret", browser_model=str(folder))
    with TestClient(create_app(config, engine_for(pipeline))) as client:
        key = {"X-API-Key": "s3cret"}
        assert client.get("/v1/browser/transformer.onnx").status_code == 401
        served = client.get("/v1/browser/transformer.onnx", headers=key)
        assert served.status_code == 200 and served.content == b"onnx-transformer.onnx"
        assert client.get("/v1/browser/onnx_export.json", headers=key).json() == {"size": 64}
        for name in ("secret.txt", "config.json"):
            refused = client.get(f"/v1/browser/{name}", headers=key)
            assert refused.status_code == 404 and "allowed: onnx_export.json" in refused.json()["detail"]
        assert client.get("/v1/browser/..%2Fsecret.txt", headers=key).status_code == 404


def test_without_a_browser_model_the_files_are_404_and_a_bad_folder_is_refused_at_start(pipeline, tmp_path):
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        missing = client.get("/v1/browser/transformer.onnx")
        assert missing.status_code == 404 and "browser_model" in missing.json()["detail"]
    with pytest.raises(ValueError, match="not an ONNX export \\(missing onnx_export.json"):
        create_app(ServerConfig(browser_model=str(tmp_path)), engine_for(pipeline))


OPENAPI_FIXTURE = Path(__file__).parents[1] / "web/tests/fixtures/openapi-generate.json"


def generate_request_document(client) -> dict:
    """The parts of the server's OpenAPI document that the web UI reads its form's defaults
    from: POST /v1/generate and the request schema it references."""
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/generate"]["post"]["requestBody"]
    name = body["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    return {
        "paths": {"/v1/generate": {"post": {"requestBody": body}}},
        "components": {"schemas": {name: document["components"]["schemas"][name]}},
    }


def test_the_request_schema_states_the_served_models_sampling_defaults_as_the_ui_reads_them(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    pipeline.generation_config = GenerationConfig(
        steps=7, guidance=4.5, guidance_interval=(0.5, 1.0), time_shift=2.0, early_stop=0.05
    )
    with TestClient(create_app(ServerConfig(), engine_for(pipeline))) as client:
        document = generate_request_document(client)
    (schema,) = document["components"]["schemas"].values()
    names = ("steps", "guidance", "time_shift", "early_stop")
    defaults = {name: schema["properties"][name]["default"] for name in names}
    assert defaults == {"steps": 7, "guidance": 4.5, "time_shift": 2.0, "early_stop": 0.05}
    assert "guidance_interval" not in schema["properties"]  # the model's own, as its card measured it
    # web/tests/api.test.ts reads this copy: FRACTALFLOW_UPDATE_FIXTURES=1 rewrites it when the layout changes
    if os.environ.get("FRACTALFLOW_UPDATE_FIXTURES"):
        OPENAPI_FIXTURE.write_text(json.dumps(document, indent=2) + "\n")
    assert json.loads(OPENAPI_FIXTURE.read_text()) == document, f"{OPENAPI_FIXTURE} is out of date"
