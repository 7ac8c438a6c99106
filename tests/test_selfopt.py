"""The run history and the regression check (monitoring/selfopt.py, ``fractalflow history``)."""

import json

import numpy as np
import pytest

from fractalflow.cli import main
from fractalflow.evaluation.frechet import frechet_distance_of_features, frechet_distance_resampled
from fractalflow.monitoring.selfopt import (
    CheckSettings,
    RunHistory,
    RunRecord,
    bench_records,
    check_regression,
    record_run,
)

SETTINGS = {"case": {"profile": "cpu", "resolution": "standard", "steps": 20}}


def timings(rng, runs, repeats=10, scale=1.0):
    """Seconds of ``runs`` bench runs on a noisy machine: each run shifted by up to a few per
    cent (load from other work), each repeat with 4 % jitter."""
    return [list(scale * rng.uniform(0.97, 1.03) * rng.lognormal(np.log(0.15), 0.04, repeats)) for _ in range(runs)]


def record_timings(history, runs, model="a"):
    return [
        history.record(RunRecord("bench", "cpu/standard", SETTINGS, {"seconds_to_image": np.median(t)},
                                 {"seconds_to_image": t}, model, "cpu-x"))
        for t in runs
    ]  # fmt: skip


def test_runs_are_kept_and_only_those_of_equal_kind_hardware_and_settings_are_comparable(tmp_path):
    history = RunHistory(tmp_path / "h.sqlite")
    first = history.record(RunRecord("eval", "m", {"n": 10}, {"fd_effnet_l0": 300.0}, model="a", hardware="cpu-x"))
    history.record(RunRecord("eval", "m", {"n": 20}, {"fd_effnet_l0": 310.0}, model="a", hardware="cpu-x"))
    history.record(RunRecord("eval", "m", {"n": 10}, {"fd_effnet_l0": 320.0}, model="a", hardware="gpu-y"))
    history.record(RunRecord("bench", "m", {"n": 10}, {"seconds_to_image": 0.1}, hardware="cpu-x"))
    newest = history.record(RunRecord("eval", "m", {"n": 10}, {"fd_effnet_l0": 330.0}, model="b", hardware="cpu-x"))
    assert [r.id for r in history.comparable(newest)] == [first.id]  # another model is what a check compares
    assert history.get(first.id).metrics == {"fd_effnet_l0": 300.0} and history.get(first.id).created > 0
    assert [r.kind for r in history.runs("eval")] == ["eval"] * 4
    with pytest.raises(ValueError, match="no run 99 in"):
        history.get(99)


def test_a_twenty_percent_slowdown_is_flagged_and_five_clean_repeats_are_not(tmp_path):
    rng = np.random.default_rng(0)
    history = RunHistory(tmp_path / "h.sqlite")
    record_timings(history, timings(rng, 5))
    clean = record_timings(history, timings(rng, 5))
    for run in clean:
        baseline = history.comparable(run, 5)
        assert not any(f.regressed for f in check_regression(run, baseline)), run.id
    slow = record_timings(history, timings(rng, 1, scale=1.2))[0]
    (finding,) = check_regression(slow, history.comparable(slow, 5))
    assert finding.regressed and finding.test == "rank" and 0.12 < finding.worse_by < 0.3, finding


def test_a_timing_whose_baseline_drifted_is_inconclusive_not_a_regression(tmp_path):
    rng = np.random.default_rng(5)
    history = RunHistory(tmp_path / "h.sqlite")
    # the machine slows by 35 % after four runs, as a shared one does when a neighbour starts
    record_timings(history, timings(rng, 4) + timings(rng, 1, scale=1.35))
    after = record_timings(history, timings(rng, 1, scale=1.35))[0]
    (finding,) = check_regression(after, history.comparable(after, 5))
    assert finding.p_value < 0.01 and finding.worse_by > 0.2  # the rank test alone would cry wolf
    assert finding.inconclusive and not finding.regressed and finding.baseline_drift > 0.25
    assert "UNSURE" in finding.describe() and "the machine changed speed" in finding.describe()
    # on a steady baseline the same test judges
    steady = check_regression(after, history.comparable(after, 5)[1:])[0]  # newest first: the four before
    assert steady.regressed and not steady.inconclusive and steady.baseline_drift < 0.1


def drifting_pairs(rng, slowdown, repeats=20):
    """Seconds of ``repeats`` image pairs drawn alternately on a machine whose speed wanders by
    up to 40 % during the run (both of a pair see the same moment), each image with 4 % jitter;
    the first of a pair is ``slowdown`` slower in its work."""
    speed = np.cumprod(rng.uniform(0.93, 1.08, repeats)).clip(0.8, 1.4)
    jitter = rng.lognormal(np.log(0.15), 0.04, (2, repeats))
    return list(speed * jitter[0] * (1 + slowdown)), list(speed * jitter[1])


def test_timings_paired_with_a_reference_judge_a_drifting_machine_without_earlier_runs():
    rng = np.random.default_rng(7)
    for repeat in range(5):
        new, reference = drifting_pairs(rng, 0.0)
        run = RunRecord("bench", "x", SETTINGS, {}, {"seconds_to_image": new, "reference:seconds_to_image": reference})
        (finding,) = check_regression(run, [])
        assert finding.test == "paired" and not finding.regressed and not finding.inconclusive, (repeat, finding)
    new, reference = drifting_pairs(rng, 0.2)
    run = RunRecord("bench", "x", SETTINGS, {}, {"seconds_to_image": new, "reference:seconds_to_image": reference})
    (finding,) = check_regression(run, [])
    assert finding.regressed and 0.12 < finding.worse_by < 0.3 and finding.p_value < 0.01, finding
    # the same timings unpaired, against runs of the same drifting machine, cannot be judged
    earlier = [
        RunRecord("bench", "x", SETTINGS, {}, {"seconds_to_image": drifting_pairs(rng, 0.0)[1]}) for _ in range(5)
    ]
    unpaired = RunRecord("bench", "x", SETTINGS, {}, {"seconds_to_image": new})
    assert check_regression(unpaired, earlier)[0].verdict != "REGRESSED"


def test_a_small_but_significant_change_is_below_the_threshold_and_faster_is_never_a_regression(tmp_path):
    rng = np.random.default_rng(1)
    baseline = [RunRecord("bench", "x", SETTINGS, {}, {"seconds_to_image": t}) for t in timings(rng, 5, 30)]
    slightly = RunRecord("bench", "x", SETTINGS, {}, {"seconds_to_image": timings(rng, 1, 30, scale=1.03)[0]})
    faster = RunRecord("bench", "x", SETTINGS, {}, {"seconds_to_image": timings(rng, 1, 30, scale=0.7)[0]})
    assert not check_regression(slightly, baseline)[0].regressed  # within min_change (5 %)
    assert not check_regression(faster, baseline)[0].regressed
    strict = CheckSettings(min_change=0.0, alpha=0.05)
    assert check_regression(faster, baseline, strict)[0].worse_by < 0


def test_fd_resamples_spread_around_the_fd_and_a_quality_drop_is_flagged_by_the_bootstrap(tmp_path):
    rng = np.random.default_rng(2)
    real = rng.normal(size=(300, 8))
    good = rng.normal(size=(300, 8)) + 0.1
    worse = rng.normal(size=(300, 8)) * 1.3 + 0.4  # what fewer sampling steps do: off the data
    resampled = frechet_distance_resampled(real, good, 50, seed=0)
    assert len(resampled) == 50 and np.std(resampled) > 0
    assert abs(np.median(resampled) - frechet_distance_of_features(real, good)) < 3 * np.std(resampled)
    baseline = [RunRecord("eval", "m", {}, {}, {"fd_effnet_l0": frechet_distance_resampled(real, good, 50, seed=s)})
                for s in range(3)]  # fmt: skip
    again = RunRecord("eval", "m", {}, {}, {"fd_effnet_l0": frechet_distance_resampled(real, good, 50, seed=9)})
    dropped = RunRecord("eval", "m", {}, {}, {"fd_effnet_l0": frechet_distance_resampled(real, worse, 50, seed=9)})
    assert not check_regression(again, baseline)[0].regressed
    finding = check_regression(dropped, baseline)[0]
    assert finding.regressed and finding.test == "bootstrap" and finding.p_value < 0.01


def test_per_image_values_pair_by_seed_so_a_consistent_drop_is_flagged_and_identical_repeats_are_not():
    rng = np.random.default_rng(4)
    distances = rng.lognormal(np.log(20.0), 0.3, 100)  # image i's distance to the nearest real image
    cosines = rng.uniform(0.2, 0.6, 100)

    def run(distance, cosine):
        samples = {"per_image:nearest_real_distance": list(distance), "per_image:alignment_cosine": list(cosine)}
        return RunRecord("eval", "m", {}, {}, samples)

    baseline = [run(distances, cosines) for _ in range(5)]  # the same seeds draw the same images
    repeat = check_regression(run(distances, cosines), baseline)
    assert [f.test for f in repeat] == ["signed-rank"] * 2 and not any(f.regressed for f in repeat)
    assert all(f.p_value == 1.0 for f in repeat)
    # each image a little off, by more than its own jitter on average: what fewer steps do
    blurred = run(distances * rng.normal(1.08, 0.05, 100), cosines - rng.normal(0.03, 0.02, 100))
    by_metric = {f.metric: f for f in check_regression(blurred, baseline)}
    distance = by_metric["per_image:nearest_real_distance"]
    assert distance.regressed and distance.p_value < 1e-6 and 0.05 < distance.worse_by < 0.12
    assert by_metric["per_image:alignment_cosine"].worse_by > 0
    # under the 2 % paired threshold: significant, but too small to count
    slight = {f.metric: f for f in check_regression(run(distances * rng.normal(1.01, 0.005, 100), cosines), baseline)}
    assert slight["per_image:nearest_real_distance"].p_value < 1e-6
    assert not any(f.regressed for f in slight.values())
    fewer_images = run(distances[:50], cosines[:50])  # another image count pairs with nothing
    assert check_regression(fewer_images, baseline) == []


def test_history_check_exits_1_on_a_regression_with_the_evidence_and_0_otherwise(tmp_path, capsys):
    path = tmp_path / "h.sqlite"
    rng = np.random.default_rng(3)
    history = RunHistory(path)
    record_timings(history, timings(rng, 5))
    assert main(["history", "check", "--path", str(path)]) == 0
    assert "no regression" in capsys.readouterr().out
    record_timings(history, timings(rng, 1, scale=1.25), model="slow")
    assert main(["history", "check", "--path", str(path)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED seconds_to_image" in out and "rank p =" in out
    assert main(["history", "--path", str(path)]) == 0 and "cpu/standard" in capsys.readouterr().out
    assert main(["history", "compare", "1", "6", "--path", str(path)]) == 0
    assert "seconds_to_image" in capsys.readouterr().out
    new, reference = drifting_pairs(rng, 0.25)
    paired = {"seconds_to_image": new, "reference:seconds_to_image": reference}
    history.record(RunRecord("bench", "cpu/standard", {"reference": "v1"}, {}, paired, "v2", "cpu-x"))
    assert main(["history", "check", "--path", str(path)]) == 1  # no earlier run with its settings: the pairs judge
    out = capsys.readouterr().out
    assert "against its reference:" in out and "REGRESSED seconds_to_image" in out and "paired p =" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["history", "compare", "1"], "history compare needs two run ids"),
        (["history", "check", "1", "2"], "history check takes at most one run id"),
        (["history", "check", "--alpha", "0.9"], "alpha=0.9 must be in (0, 0.5)"),
        (["history", "compare", "1", "2"], "no run 1 in"),
    ],
)
def test_history_bad_input_is_one_clear_error(tmp_path, capsys, argv, message):
    record_run("eval", "m", {}, {"fd_effnet_l0": 1.0}, path=tmp_path / "other.sqlite")
    assert main([*argv, "--path", str(tmp_path / "h.sqlite")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_bench_report_becomes_one_run_per_profile_and_resolution_without_the_model_path():
    row = {
        "case": {"profile": "cpu", "resolution": "standard", "model": "/some/folder", "steps": 20},
        "profile": {"name": "cpu", "threads": 2},
        "seconds_to_image": 0.15,
        "time_ratio": 0.5,
        "samples": {"seconds_to_image": [0.14, 0.15, 0.16]},
        "model_sha256": "abc",
        "eval": {"fd_effnet_l0": 320.0, "fd_resampled": [321.0, 325.0]},
    }
    (record,) = bench_records({"rows": [row], "hardware": "cpu-x"})
    assert record["name"] == "cpu/standard" and "model" not in record["settings"]["case"]
    assert record["samples"] == {"seconds_to_image": [0.14, 0.15, 0.16], "fd_effnet_l0": [321.0, 325.0]}
    assert record["metrics"]["fd_effnet_l0"] == 320.0 and record["model"] == "abc" and record["hardware"] == "cpu-x"


def test_a_training_run_is_recorded_with_its_settings_and_losses(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--out", str(tmp_path / "run"), "--preset", "tiny", "--steps", "4"]
    argv += ["--batch-size", "4", "--image-size", "16", "--log-every", "1", "--checkpoint-every", "0"]
    assert main([*argv, "--no-progress"]) == 0
    (run,) = RunHistory().runs()  # the test's own history ($FRACTALFLOW_HISTORY)
    assert run.kind == "train" and run.settings["train"]["steps"] == 4 and run.settings["data"] == "digits"
    assert len(run.samples["loss"]) == 4 and run.metrics["step"] == 4 and run.git_commit != ""
    assert main([*argv[:4], str(tmp_path / "again"), *argv[5:], "--no-progress", "--no-history"]) == 0
    assert len(RunHistory().runs()) == 1


def test_the_health_report_draws_the_losses_lists_health_events_and_checks_the_history(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "scalars.jsonl").write_text(
        "".join(json.dumps({"tag": "train/loss", "value": 1.0 / (s + 1), "step": s}) + "\n" for s in range(10))
    )
    events = [
        {"step": 4, "event": "skipped", "reason": "loss is nan"},
        {"step": 9, "event": "rolled back", "to_step": 5},
    ]
    (run / "logs" / "health.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    rng = np.random.default_rng(4)
    history = RunHistory()  # the test's own ($FRACTALFLOW_HISTORY)
    record_timings(history, timings(rng, 5))
    record_timings(history, timings(rng, 1, scale=1.3))
    assert main(["health", "report", "--run", str(run), "--out", str(tmp_path / "h.html")]) == 0
    page = (tmp_path / "h.html").read_text()
    assert page.count("<polyline") == 1 and 'aria-label="train/loss"' in page
    assert "1 skipped, 1 rolled back" in page and "loss is nan" in page
    assert "Newest bench run (6) against 5 earlier: regression" in page and "REGRESSED" in page
    assert main(["health", "report", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.html")]) == 2
    assert "has no logs/ folder" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
