"""CurriculumScheduler: stage specs, fixed and plateau pacing, and its place in the Trainer
(sizes, timesteps and kinds drawn per stage; exact resume across a stage transition)."""

import random

import pytest
import torch
from test_training import digits, make_trainer

from fractalflow.training.curriculum import CurriculumScheduler, Stage, parse_curriculum


def test_a_spec_string_gives_stages_with_sizes_timestep_mean_kind_and_share():
    stages = parse_curriculum("32@0.5/emoji:0.2, 32:0.3, 64+128:0.5")
    assert stages == (
        Stage((32,), 0.5, "emoji", 0.2),
        Stage((32,), None, "", 0.3),
        Stage((64, 128), None, "", 0.5),
    )
    assert stages[0].describe() == "32 px, t mean 0.5, emoji only"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("32:0.5,64", "expected SIZES[@MEAN][/KIND]:SHARE"),
        ("32:0.5,64:0.6", "add up to 1.1"),
        ("32/photos:1", "kind 'photos'"),
        ("0:1", "must be positive"),
    ],
)
def test_a_bad_spec_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_curriculum(spec)


def run(scheduler, losses):
    """Feed the losses in order; the stage index of every step (before it runs)."""
    seen = []
    for step, loss in enumerate(losses, start=1):
        seen.append(scheduler.index)
        scheduler.observe(step, loss)
    return seen


def test_fixed_pacing_gives_each_stage_its_share():
    scheduler = CurriculumScheduler(parse_curriculum("32:0.25,64:0.5,128:0.25"), steps=100)
    seen = run(scheduler, [1.0] * 100)
    assert [seen.count(i) for i in range(3)] == [25, 50, 25]


def test_plateau_pacing_moves_on_when_the_loss_stops_falling_within_its_bounds():
    stages = parse_curriculum("32:0.5,64:0.5")
    flat = CurriculumScheduler(stages, steps=1000, pacing="plateau", min_share=0.2, window=20)
    seen = run(flat, [1.0] * 1000)
    assert seen.count(0) == 100  # flat from the start: leaves at its minimum, 0.2 of its 500 steps
    falling = CurriculumScheduler(stages, steps=1000, pacing="plateau", min_share=0.2, window=20)
    seen = run(falling, [1.0 / (1 + step) for step in range(1000)])
    assert seen.count(0) == 500  # still improving: stays for its whole share
    noisy = CurriculumScheduler(stages, steps=1000, pacing="plateau", min_share=0.2, window=20)
    rng = random.Random(0)
    seen = run(noisy, [max(0.5, 1 - step / 300) + rng.gauss(0, 0.01) for step in range(1000)])
    assert 150 < seen.count(0) < 230  # falls until step 150, then flat: leaves within two windows


def test_the_trainer_draws_each_stage_sizes_and_timesteps():
    dataset = digits(32)
    trainer = make_trainer("unused", dataset, curriculum="8@-1:0.5,16:0.5", steps=10, checkpoint_every=0)
    shapes = []
    for step in range(10):
        shapes.append(trainer.batch_shape())
        trainer.curriculum.observe(step + 1, 1.0)
    assert shapes == [(8, 32)] * 5 + [(16, 8)] * 5  # batch 8 at 16 px: 4x the images at 8 px
    assert trainer.timestep_mean == 0.0


def test_a_stage_of_one_kind_needs_an_emoji_dataset():
    with pytest.raises(ValueError, match="needs an emoji dataset"):
        make_trainer("unused", digits(8), curriculum="16/emoji:0.5,16:0.5")


def test_resume_across_a_stage_transition_reproduces_the_uninterrupted_run(tmp_path):
    dataset = digits(64)
    settings = dict(curriculum="8:0.3,16:0.7", curriculum_pacing="plateau", checkpoint_every=10)
    straight = make_trainer(tmp_path / "straight", dataset, **settings)
    straight.train()
    interrupted = make_trainer(tmp_path / "split", dataset, **settings)
    interrupted.train(stop_at=10)  # stage 1 ends at step 12
    resumed = make_trainer(tmp_path / "split", dataset, **settings)
    assert resumed.resume() and resumed.curriculum.index == 0 and resumed.step == 10
    resumed.train()
    assert resumed.curriculum.state_dict() == straight.curriculum.state_dict()
    assert [p["stage"] for p in straight.history] == [0, 1, 1, 1]  # logged every 10 steps
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_train_command_refuses_a_bad_curriculum_in_one_line(tmp_path, capsys):
    from test_cli import run as run_cli

    status, _, stderr = run_cli(
        capsys, "train", "--data", "digits", "--out", str(tmp_path / "r"), "--curriculum", "8:0.5,16:0.4"
    )
    assert status == 2 and "curriculum shares add up to 0.9" in stderr and "Traceback" not in stderr
