"""InferenceEngine: profiles and auto, int8, lazy loading, and dynamic batching."""

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from fractalflow import FractalFlowPipeline, GenerationConfig
from fractalflow.evaluation.evaluate import model_fingerprint
from fractalflow.inference import (
    PROFILES,
    DeviceReading,
    GenerationCancelled,
    GenerationRequest,
    InferenceEngine,
    InferenceProfile,
    auto_profile,
    get_profile,
)
from fractalflow.model.adaptive import CacheSettings
from fractalflow.model.adaptive_policies import AdaptivePolicies

GIB = 1024**3


def pixels(image):
    return np.asarray(image).astype(np.float64)


@pytest.mark.parametrize(
    "reading,expected",
    [
        (DeviceReading(cuda=True, gpu_free_bytes=20 * GIB, cpu_available_bytes=8 * GIB, cpu_cores=16), "gpu"),
        (DeviceReading(cuda=True, gpu_free_bytes=GIB // 2, cpu_available_bytes=8 * GIB, cpu_cores=16), "cpu"),
        (DeviceReading(cuda=False, gpu_free_bytes=0, cpu_available_bytes=8 * GIB, cpu_cores=4), "cpu"),
        (DeviceReading(cuda=False, gpu_free_bytes=0, cpu_available_bytes=GIB, cpu_cores=4), "edge"),
        (DeviceReading(False, 0, cpu_available_bytes=GIB, cpu_cores=4, cpu_bf16=True), "edge"),
    ],
)
def test_auto_picks_a_profile_from_the_measured_device_and_memory(reading, expected):
    profile = auto_profile(reading)
    assert profile.name == expected
    if expected != "gpu":
        assert profile.threads == reading.cpu_cores
    if expected == "cpu":  # bf16 only where the CPU runs it natively
        assert profile.dtype == ("bf16" if reading.cpu_bf16 else "fp32")


def test_auto_runs_the_cpu_in_bf16_where_it_has_native_bf16():
    reading = DeviceReading(cuda=False, gpu_free_bytes=0, cpu_available_bytes=8 * GIB, cpu_cores=2, cpu_bf16=True)
    assert auto_profile(reading).dtype == "bf16"
    assert auto_profile(replace(reading, cpu_bf16=False)).dtype == "fp32"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: get_profile("phone"), "unknown profile 'phone'; choose one of \\['auto', 'gpu', 'cpu', 'edge'\\]"),
        (lambda: InferenceProfile(name="x", device="cuda", quantize="int8"), "int8 .* CPU only"),
        (lambda: InferenceProfile(name="x", dtype="fp8"), "dtype='fp8'; allowed"),
        (lambda: InferenceProfile(name="x", max_batch=0), "max_batch >= 1"),
    ],
)
def test_bad_profiles_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_model_loads_on_first_use(tiny_model_folder):
    engine = InferenceEngine(tiny_model_folder, profile="cpu")
    assert engine._pipeline is None
    image = engine.generate("three", steps=2, seed=0).images[0]
    assert engine._pipeline is not None and image.size == (16, 16)


def test_int8_images_stay_close_to_fp32(tiny_model_folder):
    fp32 = InferenceEngine(tiny_model_folder, profile="cpu")
    int8 = InferenceEngine(tiny_model_folder, profile=replace(PROFILES["edge"], max_batch=4))
    prompts = ["one", "seven", "nine", "zero"]
    a = fp32.generate(prompts, steps=8, seed=1).images
    b = int8.generate(prompts, steps=8, seed=1).images
    difference = np.mean([np.abs(pixels(x) - pixels(y)).mean() for x, y in zip(a, b)])
    assert "quantized" in type(int8.pipeline.model.body.down_blocks[0].mlp.proj).__module__
    assert difference < 4.0, difference  # mean absolute difference in 0..255 pixel levels
    # eval results name the model they measured: the int8 one has a fingerprint of its own
    assert model_fingerprint(int8.pipeline.model) not in ("", model_fingerprint(fp32.pipeline.model))


def test_bf16_autocast_images_stay_close_to_fp32(tiny_model_folder):
    fp32 = InferenceEngine(tiny_model_folder, profile="cpu")
    bf16 = InferenceEngine(tiny_model_folder, profile=replace(PROFILES["cpu"], dtype="bf16"))
    a = fp32.generate(["one", "seven"], steps=8, seed=1).images
    b = bf16.generate(["one", "seven"], steps=8, seed=1).images
    difference = np.mean([np.abs(pixels(x) - pixels(y)).mean() for x, y in zip(a, b)])
    assert bf16.pipeline.autocast_dtype is torch.bfloat16
    assert 0 < difference < 4.0, difference  # it did run in bf16, and stays within a few 0..255 levels


def test_batch_over_the_profile_limit_is_refused(tiny_model_folder):
    engine = InferenceEngine(tiny_model_folder, profile=replace(PROFILES["cpu"], max_batch=4))
    with pytest.raises(ValueError, match="over the limit of profile 'cpu': max_batch=4"):
        engine.generate("one", num_images_per_prompt=5)
    with pytest.raises(ValueError, match="max_batch=4"):
        engine.submit(GenerationRequest("one", num_images=5))


def test_batched_requests_give_the_images_of_one_at_a_time(tiny_model_folder):
    profile = replace(PROFILES["cpu"], max_batch=8, batch_window_ms=200.0)
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    requests = [("two", 5, 1), ("eight", 11, 2), ("four", 3, 1)]
    previews: dict[str, list[int]] = {name: [] for name, _, _ in requests}

    def record(name):
        return lambda event: previews[name].append(len(event.preview))

    with InferenceEngine(profile=profile, pipeline=pipeline) as engine:
        futures = [
            engine.submit(GenerationRequest(name, seed, n, GenerationConfig(steps=4), callback=record(name)))
            for name, seed, n in requests
        ]
        results = [future.result(timeout=60) for future in futures]
    assert engine.batches_run == [4]
    for (name, seed, n), result in zip(requests, results):
        alone = pipeline.generate(name, num_images_per_prompt=n, steps=4, seed=seed)
        assert result.metadata["prompts"] == [name] and result.metadata["seeds"] == list(range(seed, seed + n))
        assert len(result.metadata["health"]) == n  # this request's images only
        for got, expected in zip(result.images, alone.images, strict=True):
            assert np.abs(pixels(got) - pixels(expected)).max() <= 1
        steps_run = sum(stage["steps_run"] for stage in alone.metadata["stages"])
        assert previews[name] == [n] * steps_run  # every step, only this request's images


def test_requests_share_a_batch_only_when_their_adaptive_policy_matches(tiny_model_folder):
    profile = replace(PROFILES["cpu"], max_batch=8, batch_window_ms=200.0, adaptive="off")
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    pipeline.adaptive_policies = AdaptivePolicies({2.0: CacheSettings(every=3)}, auto=2.0)
    pipeline.generation_config = GenerationConfig(steps=6)
    asked = [None, "off", "auto", 2.0]  # None: the engine's defaults, so it joins "off"; 2.0 is what auto picks
    with InferenceEngine(profile=profile, pipeline=pipeline) as engine:
        configs = [None if a is None else GenerationConfig(steps=6, adaptive=a) for a in asked]
        futures = [engine.submit(GenerationRequest("one", config=config)) for config in configs]
        results = [future.result(timeout=60) for future in futures]
    assert sorted(engine.batches_run) == [1, 1, 2]  # "auto" and 2.0 are asked differently: not batched
    assert [r.metadata["adaptive"]["target"] for r in results] == [None, None, 2.0, 2.0]
    assert results[0].metadata["batch"] == results[1].metadata["batch"] == 2


def test_cancelling_a_running_request_stops_its_batch_early(tiny_model_folder):
    steps_seen = []
    with InferenceEngine(tiny_model_folder, profile="cpu") as engine:

        def cancel_after_two_steps(event):
            steps_seen.append(event.step)
            if event.step == 2:
                engine.cancel(future)

        request = GenerationRequest("one", config=GenerationConfig(steps=20), callback=cancel_after_two_steps)
        future = engine.submit(request)
        with pytest.raises(GenerationCancelled):
            future.result(timeout=60)
    assert steps_seen == [1, 2]  # no events after the cancel, and the batch stopped at step 3
    assert engine.batches_run == []


def test_cancelling_one_request_of_a_batch_leaves_the_others_whole(tiny_model_folder):
    profile = replace(PROFILES["cpu"], batch_window_ms=300.0)
    seen: dict[str, list[int]] = {"kept": [], "dropped": []}
    with InferenceEngine(tiny_model_folder, profile=profile) as engine:

        def on_dropped(event):
            seen["dropped"].append(event.step)
            engine.cancel(dropped)

        six = GenerationConfig(steps=6, size=16)  # one scale: six steps
        kept = engine.submit(GenerationRequest("one", config=six, callback=lambda e: seen["kept"].append(e.step)))
        dropped = engine.submit(GenerationRequest("two", config=six, callback=on_dropped))
        # another batch, still queued
        waiting = engine.submit(GenerationRequest("three", config=GenerationConfig(steps=6, guidance=1.0)))
        assert engine.cancel(waiting) and waiting.cancelled()
        assert len(kept.result(timeout=60).images) == 1
        with pytest.raises(GenerationCancelled):
            dropped.result(timeout=60)
    assert seen == {"kept": [1, 2, 3, 4, 5, 6], "dropped": [1]}
    assert engine.batches_run[0] == 2  # both ran in one batch
    assert not engine.cancel(kept)  # a finished request cannot be cancelled


def test_incompatible_requests_run_in_separate_batches_and_errors_stay_with_their_request(tiny_model_folder):
    profile = replace(PROFILES["cpu"], batch_window_ms=200.0)
    with InferenceEngine(tiny_model_folder, profile=profile) as engine:
        a = engine.submit(GenerationRequest("one", config=GenerationConfig(steps=2)))
        b = engine.submit(GenerationRequest("one", config=GenerationConfig(steps=3)))
        # a valid config that this model cannot draw (its sizes are multiples of 4): found in the batch
        bad = engine.submit(GenerationRequest("one", config=GenerationConfig(steps=2, size=18)))
        assert len(a.result(timeout=60).images) == 1 and len(b.result(timeout=60).images) == 1
        with pytest.raises(ValueError, match="multiples of 4"):
            bad.result(timeout=60)
        after = engine.submit(GenerationRequest("two", config=GenerationConfig(steps=2)))
        assert len(after.result(timeout=60).images) == 1  # the worker survived the failure
    assert sorted(engine.batches_run) == [1, 1, 1]


def test_bench_measures_each_profile_against_the_baseline_in_its_own_process(tiny_model_folder):
    from fractalflow.inference.bench import format_table, run_bench

    report = run_bench(["cpu", "edge"], ["standard"], model=str(tiny_model_folder))
    rows = report["rows"]
    assert [row["case"]["profile"] for row in rows] == ["baseline", "cpu", "edge"]
    assert rows[0]["time_ratio"] == 1.0 and rows[2]["profile"]["quantize"] == "int8"
    for row in rows:
        assert row["size"] == 16
        assert 0 < row["seconds_to_first_preview"] < row["seconds_to_image"]
        assert row["images_per_s_best"] >= row["images_per_s_batch1"] > 0 and row["peak_rss_mb"] > 50
    assert format_table(rows).count("\n") == 4


def test_bench_runs_each_profile_with_its_step_caching_and_the_baseline_in_full(tiny_model_folder):
    from fractalflow.inference.bench import BenchCase, generation_config

    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    pipeline.generation_config = GenerationConfig(guidance=6.0, guidance_interval=(0.5, 1.0), time_shift=2.0)
    cpu = generation_config(BenchCase(profile="cpu"), pipeline, PROFILES["cpu"])
    base = generation_config(BenchCase(), pipeline, PROFILES["cpu"])
    assert cpu.adaptive == PROFILES["cpu"].adaptive == "auto"
    assert base.adaptive == "off" and base.size == 16
    for config in (cpu, base):  # both sample as the model's own defaults say, as a user's call would
        assert (config.guidance, config.guidance_interval, config.time_shift) == (6.0, (0.5, 1.0), 2.0)


class Recorded:
    """A stand-in pipeline that records which of two ran each image and takes ``seconds``."""

    def __init__(self, name, seconds, log):
        self.name, self.seconds, self.log = name, seconds, log
        self.config = type("Config", (), {"class_names": ["x"]})()

    def generate(self, prompt, seed, callback, config):
        self.log.append((self.name, seed))
        callback(None)
        time.sleep(self.seconds)


def test_interleaved_timing_alternates_the_two_models_and_pairs_image_by_image():
    from fractalflow.inference.bench import interleaved_latency

    log = []
    new, old = interleaved_latency(Recorded("A", 0.02, log), Recorded("B", 0.01, log), GenerationConfig(), repeats=4)
    # a warm-up pair, then A B / B A in turn, so a drift in time hits both alike
    assert [name for name, _ in log] == ["A", "B", "B", "A", "A", "B", "B", "A", "A", "B"]
    assert [seed for _, seed in log] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert len(new) == len(old) == 4 and all(a > b for a, b in zip(new, old))


def test_bench_with_a_reference_records_paired_timings(tiny_model_folder):
    from fractalflow.inference.bench import format_table, run_bench

    report = run_bench([], ["standard"], model=str(tiny_model_folder), repeats=4, reference=str(tiny_model_folder))
    (row,) = report["rows"]
    assert len(row["samples"]["seconds_to_image"]) == len(row["samples"]["reference:seconds_to_image"]) == 4
    assert 0.5 < row["time_vs_reference"] < 2  # the same model on both sides
    assert "the reference model's seconds to the image" in format_table(report["rows"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--resolutions", "giant"], "choose from \\['preview', 'standard', 'high', 'ultra'\\]"),
        (["--profiles", "phone", "--n", "0"], "unknown profile 'phone'"),
    ],
)
def test_bench_bad_options_are_one_clear_error(capsys, argv, message):
    import re

    from fractalflow.cli import main

    assert main(["bench", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)
