"""Trainer: it learns, it checkpoints atomically, and a resumed run equals an uninterrupted one."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fractalflow import Conditioning, TrainConfig, model_preset
from fractalflow.data import load_digits
from fractalflow.flow import guided_velocity, sample_euler, time_grid
from fractalflow.flow.jitter import shift_each
from fractalflow.model.weights import load_model
from fractalflow.monitoring import HealthSettings, TrainingHealth
from fractalflow.training import Trainer
from fractalflow.training.checkpoint import MANIFEST, CheckpointError, file_digest, list_checkpoints
from fractalflow.training.trainer import TrainingDiverged, network_to_train


def digits(count):
    return load_digits(16).subset(torch.arange(count))


def make_trainer(out_dir, dataset, **overrides):
    settings = dict(
        steps=40,
        batch_size=8,
        image_size=16,
        learning_rate=3e-3,
        warmup_steps=5,
        checkpoint_every=10,
        keep_checkpoints=2,
        sample_every=0,
        log_every=10,
        cond_drop_prob=0.2,
    )
    config = model_preset("tiny", in_channels=1, class_names=dataset.class_names, sample_size=16)
    return Trainer(config, TrainConfig(**{**settings, **overrides}), dataset, out_dir, device="cpu", progress=False)


def test_tiny_model_memorises_a_handful_of_digits(tmp_path):
    dataset = digits(8)  # digits 0..7, one image each
    trainer = make_trainer(tmp_path, dataset, steps=300, batch_size=16, checkpoint_every=0, cond_drop_prob=0.0)
    losses = [trainer.train_step() for _ in range(300)]
    first, last = sum(losses[:10]) / 10, sum(losses[-50:]) / 50
    assert last < 0.12 and last < 0.15 * first, (first, last)

    model = trainer.model.eval()
    noise = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        samples = sample_euler(guided_velocity(model, Conditioning(labels=dataset.labels), 1.0), noise, time_grid(20))
    real = dataset.pixels(torch.arange(8)).flatten(1)
    nearest = torch.cdist(samples.flatten(1), real).argmin(1)
    assert (nearest == torch.arange(8)).sum() >= 7, nearest


@pytest.mark.parametrize("shift_augment", [0, 2])
def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path, shift_augment):
    dataset = digits(64)
    straight = make_trainer(tmp_path / "straight", dataset, shift_augment=shift_augment)
    straight.train()

    interrupted = make_trainer(tmp_path / "split", dataset, shift_augment=shift_augment)
    interrupted.train(stop_at=20)
    del interrupted
    resumed = make_trainer(tmp_path / "split", dataset, shift_augment=shift_augment)
    assert resumed.resume() and resumed.step == 20
    resumed.train()

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b), name


def first_batches(monkeypatch, trainers) -> list[torch.Tensor]:
    """The images each trainer's first step trains on (its loss replaced by a recorder)."""
    seen = []

    def record(predict, x0, *args, **kwargs):
        seen.append(x0.clone())
        return torch.zeros((), requires_grad=True)

    monkeypatch.setattr("fractalflow.training.trainer.rectified_flow_loss", record)
    for trainer in trainers:
        trainer.train_step()
    return seen


def test_shift_augment_trains_on_each_image_moved_by_its_own_offset_within_the_amplitude(tmp_path, monkeypatch):
    dataset = digits(64)
    trainers = [make_trainer(tmp_path / str(amplitude), dataset, shift_augment=amplitude) for amplitude in (0, 2)]
    plain, moved = first_batches(monkeypatch, trainers)  # the same images (the offsets are drawn after the indices)
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    found = []
    for image, result in zip(plain, moved):
        matches = [o for o in offsets if torch.equal(shift_each(image[None], torch.tensor([o]), 2)[0], result)]
        assert matches, "an image was changed by more than a move within 2 px"
        found.append(matches[0])
    assert len(set(found)) > 3  # each image its own offset


def test_shift_fill_fills_the_rows_a_move_opens_with_its_value_not_a_mirror(tmp_path, monkeypatch):
    dataset = digits(64)
    trainers = [
        make_trainer(tmp_path / "plain", dataset),
        make_trainer(tmp_path / "white", dataset, shift_augment=2, shift_fill=1.0),
    ]
    plain, moved = first_batches(monkeypatch, trainers)
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    opened = 0
    for image, result in zip(plain, moved):
        moves = [o for o in offsets if torch.equal(shift_each(image[None], torch.tensor([o]), 2, 1.0)[0], result)]
        (dy, dx), *_ = moves
        rows = result[:, :dy] if dy > 0 else result[:, result.shape[1] + dy :]
        columns = result[:, :, :dx] if dx > 0 else result[:, :, result.shape[2] + dx :]
        assert torch.all(rows == 1.0) and torch.all(columns == 1.0)  # the frame a move opened is white
        opened += rows.numel() + columns.numel()
    assert opened > 0


def test_a_run_stopped_by_the_clock_checkpoints_where_it_stopped(tmp_path):
    trainer = make_trainer(tmp_path, digits(32), steps=10_000, checkpoint_every=5_000)
    stopped = trainer.train(max_seconds=1.0)["step"]
    assert 0 < stopped < 5_000  # no periodic checkpoint was due
    resumed = make_trainer(tmp_path, digits(32), steps=10_000, checkpoint_every=5_000)
    assert resumed.resume() and resumed.step == stopped


def test_checkpoints_are_complete_folders_and_old_ones_are_pruned(tmp_path):
    trainer = make_trainer(tmp_path, digits(32), steps=30)
    trainer.train()
    found = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in found] == ["step_0000020", "step_0000030"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    for folder in found:
        names = sorted(p.name for p in folder.iterdir())
        assert names == [
            "ema.safetensors",
            "manifest.json",
            "model.safetensors",
            "optimizer.safetensors",
            "rng.safetensors",
            "trainer_state.json",
        ]
    assert json.loads((found[-1] / "trainer_state.json").read_text())["step"] == 30


def two_checkpoints(tmp_path):
    """A run folder with checkpoints at steps 10 and 20; returns the newest."""
    make_trainer(tmp_path, digits(32), steps=20).train()
    return list_checkpoints(tmp_path / "checkpoints")[-1]


def test_a_damaged_newest_checkpoint_resumes_from_the_intact_older_one(tmp_path, capsys):
    newest = two_checkpoints(tmp_path)
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside the weights
    (newest / "model.safetensors").write_bytes(bytes(data))
    resumed = make_trainer(tmp_path, digits(32), steps=20)
    assert resumed.resume() and resumed.step == 10
    assert "model.safetensors does not match its SHA-256" in capsys.readouterr().err


def test_a_checkpoint_that_lost_its_manifest_is_not_taken_for_an_old_one(tmp_path):
    newest = two_checkpoints(tmp_path)
    (newest / MANIFEST).unlink()
    resumed = make_trainer(tmp_path, digits(32), steps=20)
    assert resumed.resume() and resumed.step == 10


def test_non_finite_weights_are_refused_even_with_a_matching_manifest(tmp_path):
    newest = two_checkpoints(tmp_path)
    for folder in list_checkpoints(tmp_path / "checkpoints"):
        weights = load_file(folder / "ema.safetensors")
        name = next(k for k, v in weights.items() if v.is_floating_point())
        weights[name].view(-1)[0] = float("nan")
        save_file(weights, folder / "ema.safetensors")
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["ema.safetensors"] = file_digest(folder / "ema.safetensors")
        (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        make_trainer(tmp_path, digits(32), steps=20).resume()
    assert newest.is_dir()  # refused, not deleted


def test_resuming_with_another_image_size_or_network_is_refused(tmp_path):
    two_checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"other settings \(image_size\)"):
        make_trainer(tmp_path, digits(32), steps=20, image_size=32).resume()
    other = make_trainer(tmp_path, digits(32), steps=40)  # more steps: a longer run, allowed
    assert other.resume() and other.step == 20


def test_half_written_checkpoints_left_by_a_kill_are_removed_by_the_next_save(tmp_path):
    two_checkpoints(tmp_path)
    folder = tmp_path / "checkpoints"
    (folder / ".step_0000030.abc123.tmp").mkdir()
    (folder / ".step_0000020.old").mkdir()
    trainer = make_trainer(tmp_path, digits(32), steps=30)
    assert trainer.resume()
    trainer.train()
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000020", "step_0000030"]


def poison(trainer, calls):
    """Make the trainer's batches on the given draw numbers (0-based) all NaN."""
    pixels, drawn = trainer.dataset.pixels, itertools.count()

    def poisoned(indices, size=None):
        batch = pixels(indices, size)
        return torch.full_like(batch, math.nan) if next(drawn) in calls else batch

    trainer.dataset.pixels = poisoned


def test_a_nan_batch_is_skipped_and_the_run_ends_within_noise_of_the_clean_run(tmp_path):
    clean = make_trainer(tmp_path / "clean", digits(64), steps=60)
    clean_summary = clean.train()
    hurt = make_trainer(tmp_path / "hurt", digits(64), steps=60)
    poison(hurt, {25})
    hurt_summary = hurt.train()
    assert hurt.step == 60 and all(torch.isfinite(p).all() for p in hurt.model.parameters())
    assert [e["event"] for e in hurt.health.events] == ["skipped"]
    assert hurt.health.events[0]["step"] == 25 and "non-finite loss" in hurt.health.events[0]["reason"]
    logged = [json.loads(line) for line in (tmp_path / "hurt" / "logs" / "health.jsonl").read_text().splitlines()]
    assert logged == hurt.health.events
    assert abs(hurt_summary["final_loss"] - clean_summary["final_loss"]) < 0.25 * clean_summary["final_loss"]


def test_skips_in_a_row_roll_back_to_the_last_checkpoint_with_a_lower_learning_rate(tmp_path):
    trainer = make_trainer(tmp_path, digits(64), steps=40, checkpoint_every=10)
    trainer.health = TrainingHealth(HealthSettings(skips_before_rollback=3))
    poison(trainer, {24, 25, 26})  # steps 24, 24, 24: three in a row
    trainer.train()
    assert [e["event"] for e in trainer.health.events] == ["skipped"] * 3 + ["rolled back"]
    assert trainer.health.events[-1] == {"step": 24, "event": "rolled back", "to_step": 20, "lr_scale": 0.5}
    assert trainer.step == 40 and trainer.scheduler.base_lrs == [3e-3 * 0.5, 3e-3 * 0.5]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_run_that_keeps_failing_gives_up_without_saving_anything(tmp_path):
    trainer = make_trainer(tmp_path, digits(32), steps=20)
    poison(trainer, set(range(1000)))
    with pytest.raises(
        TrainingDiverged, match="step 0: non-finite loss \\(nan\\), 5 times in a row, after 0 rollbacks"
    ):
        trainer.train()
    assert not list_checkpoints(tmp_path / "checkpoints")


def test_the_health_check_names_spikes_and_exploding_gradients():
    health = TrainingHealth(HealthSettings(window=10, warmup=5, spike_sigmas=4.0, max_grad_norm=100.0))
    for loss in (1.0, 1.1, 0.9, 1.0, 1.05):
        assert health.judge(0, loss, 1.0)
    assert health.problem(1.2, 1.0) is None
    assert health.problem(5.0, 1.0).startswith("loss spike (5 >")
    assert health.problem(1.0, 500.0) == "exploding gradients (norm 500 > 100)"
    assert health.problem(1.0, math.inf).startswith("non-finite gradients")
    with pytest.raises(ValueError, match="warmup=50 must be from 2 to window \\(10\\)"):
        HealthSettings(window=10)


def test_finished_run_exports_the_ema_weights_as_a_model_folder(tmp_path):
    trainer = make_trainer(tmp_path, digits(32), steps=12, checkpoint_every=0)
    trainer.train()
    loaded = load_model(tmp_path / "model")
    for (name, exported), ema in zip(loaded.state_dict().items(), trainer.ema.module.state_dict().values()):
        assert torch.equal(exported, ema), name
    assert any(not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), trainer.ema.module.parameters()))
    assert loaded.config.trained_sizes == (16,)


def test_exported_config_names_the_sizes_trained_at_so_far(tmp_path):
    trainer = make_trainer(tmp_path, digits(32), steps=20, checkpoint_every=0, curriculum="8:0.5,8+16:0.5")
    trainer.train(stop_at=2)
    trainer.export(tmp_path / "early")
    trainer.train()
    assert load_model(tmp_path / "early").config.trained_sizes == (8,)
    assert load_model(tmp_path / "model").config.trained_sizes == (8, 16)


def test_a_run_can_start_from_a_model_folder_with_a_fresh_schedule(tmp_path):
    first = make_trainer(tmp_path / "first", digits(32), steps=30, checkpoint_every=0)
    first.train()
    second = make_trainer(
        tmp_path / "second", digits(32), steps=10, checkpoint_every=0, init=str(tmp_path / "first" / "model")
    )
    for name, value in load_model(tmp_path / "first" / "model").state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name
        assert torch.equal(second.ema.module.state_dict()[name], value), name
    fresh = make_trainer(tmp_path / "fresh", digits(32), steps=10, checkpoint_every=0)
    assert second.train_step() < 0.8 * fresh.train_step()  # same batch and noise: the trained weights fit better
    assert second.scheduler.last_epoch == 1  # its own schedule, from the start


def test_a_start_needs_the_same_network(tmp_path):
    make_trainer(tmp_path / "first", digits(32), steps=2, checkpoint_every=0).train()
    dataset = digits(32)
    wider = model_preset("tiny", in_channels=1, class_names=dataset.class_names, sample_size=16, widths=(48, 64))
    config = TrainConfig(steps=2, batch_size=8, image_size=16, init=str(tmp_path / "first" / "model"))
    with pytest.raises(ValueError, match="its network differs from this run's in widths"):
        Trainer(wider, config, dataset, tmp_path / "o", progress=False)


def grown_from_a_plain_run(tmp_path, steps: int) -> tuple[torch.nn.Module, TrainConfig, Trainer]:
    """A short run without split mixing, and a run that starts from it adding mixing at 10x the rate."""
    make_trainer(tmp_path / "first", digits(32), steps=2, checkpoint_every=0).train()
    plain = load_model(tmp_path / "first" / "model")
    config = TrainConfig(
        steps=steps, batch_size=8, image_size=16, init=str(tmp_path / "first" / "model"), added_layers_lr_scale=10
    )
    grown_config = dataclasses.replace(plain.config, split_mixing="depthwise-conv")
    return plain, config, Trainer(grown_config, config, digits(32), tmp_path / "g", progress=False)


def test_a_start_may_add_split_mixing_but_not_drop_it(tmp_path):
    plain, config, grown = grown_from_a_plain_run(tmp_path, steps=2)
    for name, value in plain.state_dict().items():
        assert torch.equal(grown.model.state_dict()[name], value), name
    assert not grown.model.body.mix.conv.weight.any()  # the added mixing starts at zero
    assert grown.added_layers == ["body.mix.conv.weight", "body.mix.conv.bias"]
    added_group = grown.optimizer.param_groups[-1]  # at 10x the learning rate, the others at 1x
    assert [p.shape for p in added_group["params"]] == [p.shape for p in grown.model.body.mix.parameters()]
    assert added_group["initial_lr"] == 10 * config.learning_rate
    assert all(g["initial_lr"] == config.learning_rate for g in grown.optimizer.param_groups[:-1])
    grown.train()
    assert grown.model.body.mix.conv.weight.any()  # and learns
    with pytest.raises(ValueError, match="its network differs from this run's in split_mixing"):
        Trainer(
            plain.config,
            dataclasses.replace(config, init=str(tmp_path / "g" / "model")),
            digits(32),
            tmp_path / "s",
            progress=False,
        )


def test_the_network_to_train_is_the_init_folder_s_with_its_sizes_cleared_and_mixing_added(tmp_path):
    make_trainer(tmp_path / "first", digits(32), steps=2, checkpoint_every=0).train()
    saved = load_model(tmp_path / "first" / "model").config
    fresh = model_preset("tiny", in_channels=1, widths=(48, 64))
    assert network_to_train(fresh, None) == fresh
    grown = network_to_train(fresh, str(tmp_path / "first" / "model"), "depthwise-conv")
    assert saved.trained_sizes and grown.trained_sizes == ()
    assert grown == dataclasses.replace(saved, trained_sizes=(), split_mixing="depthwise-conv")


def test_a_rollback_lowers_every_group_s_rate_and_keeps_the_added_layers_multiple(tmp_path):
    _, config, grown = grown_from_a_plain_run(tmp_path, steps=4)
    grown.train(stop_at=2)
    grown.save_checkpoint()
    assert grown.roll_back()
    rate = config.learning_rate * grown.health.settings.rollback_lr_factor
    assert grown.scheduler.base_lrs == [rate, rate, 10 * rate]


def test_a_lora_run_trains_only_the_adapters_and_exports_them_as_an_adapter_folder(tmp_path):
    from fractalflow.training.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, base_state

    make_trainer(tmp_path / "base", digits(32), steps=10, checkpoint_every=0).train()
    base = load_model(tmp_path / "base" / "model")
    trainer = make_trainer(
        tmp_path / "lora", digits(32), steps=6, checkpoint_every=3, init=str(tmp_path / "base" / "model"), lora_rank=4
    )
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    for name, value in base.state_dict().items():  # the base weights did not move
        assert torch.equal(base_state(trainer.model)[name], value), name
    assert (tmp_path / "lora" / "model" / ADAPTER_CONFIG).is_file()
    assert (tmp_path / "lora" / "model" / ADAPTER_WEIGHTS).is_file()
    resumed = make_trainer(
        tmp_path / "lora", digits(32), steps=6, checkpoint_every=3, init=str(tmp_path / "base" / "model"), lora_rank=4
    )
    assert resumed.resume() and resumed.step == 6


def test_data_with_other_channels_than_the_model_is_rejected(tmp_path):
    dataset = digits(8)
    config = model_preset("tiny", in_channels=3, class_names=dataset.class_names)
    with pytest.raises(ValueError, match="in_channels=3"):
        Trainer(config, TrainConfig(), dataset, tmp_path)


def test_ema_warms_up_then_holds_its_decay():
    from fractalflow.training.trainer import ema_with_warmup

    update = ema_with_warmup(0.999)
    average, value = [torch.zeros(3)], [torch.ones(3)]
    update(average, value, torch.tensor(0))
    assert torch.allclose(average[0], torch.full((3,), 0.9))  # n = 0: decay 1/10
    for n in range(1, 20_000):
        update(average, value, torch.tensor(n))
    assert torch.allclose(average[0], torch.ones(3), atol=1e-6)  # the initialisation is forgotten
    average = [torch.zeros(1)]
    update(average, [torch.ones(1)], torch.tensor(10**6))
    assert average[0].item() == pytest.approx(1e-3)  # late on: the configured decay


def test_snapshots_export_the_ema_model_once_training_has_run_so_many_minutes_over_resumes(tmp_path):
    trainer = make_trainer(tmp_path, digits(32), steps=30, snapshot_minutes=(1, 2))
    trainer.train_seconds = 59.999  # as if earlier runs had trained for just under a minute
    trainer.train(stop_at=10)
    first = tmp_path / "snapshots" / "1min"
    assert json.loads((first / "snapshot.json").read_text())["step"] == 1
    assert load_model(first).config == dataclasses.replace(trainer.model_config, trained_sizes=(16,))
    assert not (tmp_path / "snapshots" / "2min").exists()

    resumed = make_trainer(tmp_path, digits(32), steps=30, snapshot_minutes=(1, 2))
    assert resumed.resume() and 60 <= resumed.train_seconds < 120  # the minutes live in the checkpoint
    resumed.train_seconds += 60
    resumed.train(stop_at=12)
    assert json.loads((tmp_path / "snapshots" / "2min" / "snapshot.json").read_text())["step"] == 11
    assert json.loads((first / "snapshot.json").read_text())["step"] == 1  # exported once
    resumed.train()  # to the end: the final model is a snapshot too
    (final,) = (tmp_path / "snapshots").glob("final-*min")
    assert json.loads((final / "snapshot.json").read_text())["step"] == 30
    assert final.name == f"final-{round(resumed.train_seconds / 60)}min"


def test_snapshot_minutes_must_be_positive():
    with pytest.raises(ValueError, match="snapshot_minutes"):
        TrainConfig(snapshot_minutes=(0,))


def test_shift_augment_is_limited_to_sixteen_pixels_and_its_fill_to_pixel_values():
    with pytest.raises(ValueError, match="shift_augment=17 must be from 0 \\(off\\) to 16"):
        TrainConfig(shift_augment=17)
    with pytest.raises(ValueError, match="shift_fill=2.0 must be from -1 to 1, or None"):
        TrainConfig(shift_fill=2.0)


def test_an_adapter_folder_loads_into_a_pipeline_and_changes_what_it_draws(tmp_path, capsys):
    from fractalflow import FractalFlowPipeline
    from fractalflow.cli import main

    make_trainer(tmp_path / "base", digits(32), steps=10, checkpoint_every=0).train()
    base_folder = str(tmp_path / "base" / "model")
    make_trainer(tmp_path / "lora", digits(32), steps=20, checkpoint_every=0, init=base_folder, lora_rank=4).train()
    base = FractalFlowPipeline.from_pretrained(base_folder, device="cpu")
    adapted = FractalFlowPipeline.from_pretrained(base_folder, device="cpu")
    adapted.load_adapter(tmp_path / "lora" / "model")
    before = base.generate("three", steps=3, seed=0)
    after = adapted.generate("three", steps=3, seed=0)
    assert after.metadata["adapter"] == "model" and before.metadata["adapter"] is None
    assert not torch.equal(torch.tensor(np.asarray(before.images[0])), torch.tensor(np.asarray(after.images[0])))
    with pytest.raises(ValueError, match="already has the adapter 'model'"):
        adapted.load_adapter(tmp_path / "lora" / "model")
    with pytest.raises(FileNotFoundError, match="is not an adapter folder"):
        base.load_adapter(tmp_path / "base")
    out = tmp_path / "a.png"
    argv = ["generate", "three", "--model", base_folder, "--adapter", str(tmp_path / "lora" / "model"), "--steps", "2"]
    assert main([*argv, "-o", str(out)]) == 0 and out.is_file()


def test_train_init_takes_the_network_from_the_folder_and_checks_it_fits_the_data(tmp_path, capsys):
    from fractalflow.cli import main

    argv = ["train", "--data", "digits", "--out", str(tmp_path / "r"), "--init", "default", "--no-progress"]
    assert main(argv) == 2
    assert "--init default: the model has 3 channels, the data 1" in capsys.readouterr().err
