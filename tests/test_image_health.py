"""Image health where users see it: the probable-hallucination flag in metadata, the server's
``/v1/health`` summary with its alerts, and the Prometheus counters."""

import pytest
import torch
from conftest import randomize
from fastapi.testclient import TestClient

from fractalflow import FractalFlowPipeline, FractalTransformer, model_preset
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.inference import InferenceEngine
from fractalflow.inference.profiles import PROFILES
from fractalflow.monitoring.drift import PromptDrift, build_reference
from fractalflow.monitoring.hallucination import (
    HallucinationCheck,
    HallucinationThreshold,
    best_threshold,
    flag_quality,
    mismatched_rows,
)
from fractalflow.monitoring.health import ImageHealthWindow
from fractalflow.serving.app import create_app
from fractalflow.serving.config import ServerConfig


@pytest.fixture
def text_pipeline(encoder):
    model = randomize(FractalTransformer(model_preset("tiny", in_channels=3, cond_dim=384, sample_size=16)))
    return FractalFlowPipeline(model, text_encoder=encoder)


def check_at(threshold):
    return HallucinationCheck(load_alignment_encoder(), HallucinationThreshold(threshold=threshold))


def test_with_a_check_every_image_carries_its_alignment_and_a_flag_below_the_threshold(text_pipeline):
    assert "alignment" not in text_pipeline.generate("red heart", steps=2, seed=0).metadata["health"][0]
    text_pipeline.hallucination_check = check_at(2.0)  # above any cosine: everything flagged
    health = text_pipeline.generate(["red heart", "bell icon"], steps=2, seed=0).metadata["health"]
    assert all(-1 <= h["alignment"] <= 1 and h["probable_hallucination"] for h in health)
    text_pipeline.hallucination_check = check_at(-2.0)
    again = text_pipeline.generate(["red heart", "bell icon"], steps=2, seed=0).metadata["health"]
    assert [h["alignment"] for h in again] == [h["alignment"] for h in health]  # the score is the image's
    assert not any(h["probable_hallucination"] for h in again)


def test_the_encoder_scores_an_image_higher_with_its_own_caption(encoder):
    check = check_at(0.0)
    red, blue = torch.ones(1, 3, 64, 64), torch.ones(1, 3, 64, 64)
    red[:, 1:, 16:48, 16:48], blue[:, :2, 16:48, 16:48] = 0.0, 0.0  # a red and a blue square on white
    pooled = encoder.encode(["red square", "blue square"]).pooled
    scores = check.scores(torch.cat([red, blue]), pooled)
    swapped = check.scores(torch.cat([red, blue]), pooled.flip(0))
    assert scores.sum() > swapped.sum()


def test_the_threshold_is_the_best_f1_cut_and_its_precision_and_recall_are_counted():
    matched, mismatched = torch.tensor([0.5, 0.6, 0.7, 0.2]), torch.tensor([0.1, 0.15, 0.3, 0.65])
    threshold = best_threshold(matched, mismatched)
    assert 0.3 < threshold < 0.5
    assert flag_quality(matched, mismatched, threshold) == (3 / 4, 3 / 4)  # flags 0.1, 0.15, 0.3 and the 0.2
    rows = mismatched_rows(["a", "a", "b", "c"])
    assert all(["a", "a", "b", "c"][other] != concept for other, concept in zip(rows, ["a", "a", "b", "c"]))


def test_the_window_shares_each_flag_and_alerts_past_its_limit():
    window = ImageHealthWindow(4, {"blank": 0.25, "probable_hallucination": 0.5})
    clean = {"finite": True, "blank": False, "out_of_range": 0.0, "probable_hallucination": False}
    window.add([clean, clean, clean, {**clean, "blank": True}])
    assert window.summary()["status"] == "ok" and window.summary()["shares"]["blank"] == 0.25  # at the limit
    window.add([{**clean, "blank": True}, {**clean, "finite": False, "out_of_range": 0.2}])
    summary = window.summary()
    shares = {"non_finite": 0.25, "blank": 0.5, "out_of_range": 0.25, "probable_hallucination": 0.0}
    assert summary["shares"] == {**shares, "prompt_drifted": 0.0}
    assert summary["status"] == "alert" and summary["alerts"] == ["blank: 50.0% of the last 4 images, above 25.0%"]
    window.add([clean] * 4)  # the window slides: old flags age out
    assert window.summary()["status"] == "ok"
    with pytest.raises(ValueError, match="unknown image flags \\['pink'\\]"):
        ImageHealthWindow(4, {"pink": 0.1})


def test_the_server_summarises_image_health_alerts_and_counts_flags_for_prometheus(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")  # random: overshoots
    engine = InferenceEngine(profile=PROFILES["cpu"], pipeline=pipeline)
    with TestClient(create_app(ServerConfig(health_window=10, alert_flagged_share=0.5), engine)) as client:
        assert client.get("/v1/health").json()["status"] == "ok"
        job = client.post("/v1/generate", json={"prompt": "seven", "steps": 2, "num_images": 2}).json()
        while client.get(job["job_url"]).json()["state"] not in ("done", "error"):
            pass
        health = client.get("/v1/health").json()
        metrics = client.get("/metrics").text
    assert health["images"] == 2 and health["window"] == 10 and health["hallucination_check"] is None
    assert health["shares"]["out_of_range"] == 1.0 and health["status"] == "alert"
    assert health["alerts"][0].startswith("out_of_range: 100.0% of the last 2 images, above 50.0%")
    assert "fractalflow_images_total 2.0" in metrics
    assert 'fractalflow_flagged_images_total{flag="out_of_range"} 2.0' in metrics
    assert "fractalflow_health_alert 1.0" in metrics


def test_the_drift_threshold_flags_the_chosen_share_of_held_back_captions_and_round_trips(tmp_path):
    vectors = torch.randn(400, 16, generator=torch.Generator().manual_seed(0))
    drift, others = build_reference(vectors, size=100, quantile=0.9)
    assert abs(float((others > drift.threshold).double().mean()) - 0.1) < 0.01
    assert drift.distances(drift.reference[:3]).abs().max() < 1e-5  # a reference caption is at distance 0
    drift.save(tmp_path)
    loaded = PromptDrift.for_model(tmp_path)
    assert abs(loaded.threshold - drift.threshold) < 1e-5 and loaded.reference.shape == (100, 16)
    assert PromptDrift.for_model(tmp_path / "nowhere") is None


def test_a_prompt_far_from_the_training_captions_is_flagged_in_the_image_health(text_pipeline, encoder):
    captions = ["red heart", "blue heart", "cat face", "dog face", "bell icon", "rocket", "pizza", "grinning face"]
    reference = encoder.encode(captions).pooled
    text_pipeline.prompt_drift = PromptDrift(reference, threshold=0.3)
    health = text_pipeline.generate(["green heart", "a photo of a mountain lake at dawn"], steps=1).metadata["health"]
    assert [h["prompt_drifted"] for h in health] == [False, True]
    assert health[0]["prompt_distance"] < health[1]["prompt_distance"]


def test_health_limits_of_the_server_config_are_checked():
    with pytest.raises(ValueError, match="alert_hallucination_share=1.5 must be from 0 to 1"):
        ServerConfig(alert_hallucination_share=1.5)
