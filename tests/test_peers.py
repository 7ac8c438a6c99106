"""The peer networks of benchmarks/peers.py honour fractalflow's velocity-model interface, so
the Trainer, the samplers and the pipeline run them unchanged."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colour_set, randomize

from fractalflow import Conditioning, FractalFlowPipeline, TrainConfig
from fractalflow.model.flops import forward_flops
from fractalflow.training import Trainer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from hdit import CosineSelfAttention, HDiT, HDiTConfig  # noqa: E402
from peer_models import DiTConfig, DiTPeer, UNetConfig, UNetPeer  # noqa: E402

TINY = {
    "hdit": (HDiT, HDiTConfig(widths=(32, 64), depths=(1, 2), head_dim=16, window=4, mapping_width=64, sample_size=16)),
    "dit": (DiTPeer, DiTConfig(patch_size=4, depth=2, heads=2, head_dim=16, sample_size=16)),
    "unet": (
        UNetPeer,
        UNetConfig(block_out_channels=(32, 64), attention_head_dim=16, norm_num_groups=8, sample_size=16),
    ),
}


def text(batch, seed, length=5):
    generator = torch.Generator().manual_seed(seed)
    return Conditioning(
        pooled=torch.randn(batch, 384, generator=generator),
        tokens=torch.randn(batch, length, 384, generator=generator),
        mask=torch.ones(batch, length, dtype=torch.bool),
    )


def build(name):
    model_class, config = TINY[name]
    torch.manual_seed(0)
    return randomize(model_class(config)).eval()


@pytest.mark.parametrize("name", TINY)
def test_peer_predicts_a_velocity_of_the_input_shape_at_two_sizes(name):
    model = build(name)
    for size in (16, 32):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            v = model(x, torch.tensor([0.2, 0.9]), text(2, seed=0))
        assert v.shape == x.shape and torch.isfinite(v).all()


@pytest.mark.parametrize("name", TINY)
def test_peer_replaces_dropped_text_by_its_learned_null_text(name):
    model = build(name)
    x, t, drop = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 0.5]), torch.tensor([True, True])
    with torch.no_grad():
        dropped_a = model(x, t, text(2, seed=0), drop)
        dropped_b = model(x, t, text(2, seed=1), drop)
        kept = model(x, t, text(2, seed=1))
    torch.testing.assert_close(dropped_a, dropped_b)
    assert (dropped_b - kept).abs().max() > 1e-4


@pytest.mark.parametrize("name", TINY)
def test_peer_rejects_sizes_its_downsampling_cannot_divide(name):
    model = build(name)
    step = model.config.downsampling
    with pytest.raises(ValueError, match=f"multiples of {step}"):
        model.check_size(step + 1, step)


def test_hdit_starts_at_zero_velocity():
    model_class, config = TINY["hdit"]
    v = model_class(config)(torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.7]), text(2, seed=0))
    assert torch.count_nonzero(v) == 0


def test_hdit_attention_depends_only_on_the_angle_between_queries_and_keys():
    torch.manual_seed(0)
    attention = randomize(CosineSelfAttention(32, 16, window=4, shifted=True), std=0.3)
    x = torch.randn(2, 8, 8, 32)
    before = attention(x)
    with torch.no_grad():
        attention.qkv.weight[:64] *= 3.0  # lengthen q and k; v untouched
    torch.testing.assert_close(attention(x), before, atol=1e-5, rtol=1e-4)


def test_hdit_cost_per_pixel_grows_slower_than_dits():
    hdit, dit = HDiT(HDiTConfig(depths=(1, 1, 4))), DiTPeer(DiTConfig(patch_size=4, depth=6, heads=4))
    hdit_ratio = forward_flops(hdit, 64) / forward_flops(hdit, 32)
    dit_ratio = forward_flops(dit, 64) / forward_flops(dit, 32)
    assert hdit_ratio < 3.9 < 4.1 < dit_ratio, (hdit_ratio, dit_ratio)  # 4 = linear in pixels


def test_trainer_trains_an_hdit_that_tells_two_prompts_apart(tmp_path, encoder):
    data = colour_set()
    settings = dict(steps=150, batch_size=16, image_size=16, learning_rate=3e-3, warmup_steps=10, ema_decay=0.9)
    config = TrainConfig(**settings, checkpoint_every=0, sample_every=0)
    model_class, model_config = TINY["hdit"]
    trainer = Trainer(
        model_config, config, data, tmp_path, progress=False, text_encoder=encoder, model_class=model_class
    )
    trainer.train()
    assert isinstance(trainer.model, HDiT)
    pipeline = FractalFlowPipeline(trainer.ema.module, text_encoder=encoder)
    result = pipeline.generate(["red square", "blue square"], num_images_per_prompt=2, steps=10, seed=0)
    red = torch.tensor([220.0, 20.0, 20.0])
    for i, image in enumerate(result.images):
        mean = torch.from_numpy(np.array(image)).float().mean((0, 1))
        closer_to_red = (mean - red).norm() < (mean - red.flip(0)).norm()
        assert closer_to_red == (i < 2), f"image {i} went to the wrong prompt ({mean})"


@pytest.mark.parametrize("name", ["dit", "unet"])
def test_trainer_lowers_the_loss_of_the_diffusers_peers(tmp_path, encoder, name):
    config = TrainConfig(steps=40, batch_size=16, image_size=16, learning_rate=2e-3, warmup_steps=5, checkpoint_every=0)
    model_class, model_config = TINY[name]
    trainer = Trainer(
        model_config, config, colour_set(), tmp_path, progress=False, text_encoder=encoder, model_class=model_class
    )
    losses = [trainer.train_step() for _ in range(40)]
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8, losses


def test_training_stops_when_the_wall_clock_budget_is_spent(tmp_path, encoder):
    model_class, model_config = TINY["hdit"]
    config = TrainConfig(steps=1000, batch_size=4, image_size=16, checkpoint_every=0, sample_every=0)
    trainer = Trainer(
        model_config, config, colour_set(), tmp_path, progress=False, text_encoder=encoder, model_class=model_class
    )
    summary = trainer.train(max_seconds=0.5)
    assert 0 < summary["step"] < 1000
    assert not (tmp_path / "model").exists()  # an unfinished run exports nothing


def test_peers_script_names_the_allowed_peers_on_a_typo():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peers.py"), "--peers", "fractal,vit"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown peer(s) ['vit']" in result.stderr and "'unet'" in result.stderr


def test_every_ablation_variant_builds_at_the_baseline_size_and_cost_but_patch_4_at_a_third():
    from ablate import VARIANTS, build

    base_model = build("baseline")[0](build("baseline")[1])
    base = sum(p.numel() for p in base_model.parameters()), forward_flops(base_model, 32)
    for name in VARIANTS:
        model_class, config = build(name)
        model = model_class(config)
        params, flops = sum(p.numel() for p in model.parameters()), forward_flops(model, 32)
        cost = 1 / 3 if getattr(config, "patch_size", 2) == 4 else 1.0  # 4x fewer tokens at level 0
        assert abs(params / base[0] - 1) < 0.25 and abs(flops / base[1] / cost - 1) < 0.25, name
