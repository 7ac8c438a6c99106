"""Peers side by side: our FractalTransformer against the networks users would pick instead,
trained and measured in one run under the same budget, so only the network differs.

Every peer gets the same data (the emoji/icon training split), resolution, MiniLM text
features with 10 % condition dropout, rectified-flow objective (logit-normal times),
optimizer (AdamW, warm-up + cosine, clipping, EMA), batch size and **wall-clock
budget**: a short timed probe measures each network's training speed, which sets its
step count so the cosine schedule ends when the budget does. Each is then evaluated with
``fractalflow eval``'s metrics on the held-out captions (Euler, 20 steps, guidance 3).

    python benchmarks/peers.py --config cpu   # ~1 h on 2 CPU cores, 32 px
    python benchmarks/peers.py --config gpu   # 64 px, longer budget, one GPU

Prints a table and writes ``benchmarks/results/peers-<config>.json`` after every peer;
re-running skips peers already measured with the same settings (``--fresh`` to redo).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hdit import HDiT, HDiTConfig
from peer_models import DiTConfig, DiTPeer, UNetConfig, UNetPeer
from PIL import Image, ImageDraw

from fractalflow import FractalFlowPipeline, TrainConfig, model_preset
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.evaluate import EvalSettings, evaluate
from fractalflow.files import atomic_path, atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.model.flops import forward_flops
from fractalflow.model.text import TextEncoder
from fractalflow.model.transformer import FractalTransformer
from fractalflow.model.weights import load_state
from fractalflow.training import Trainer

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class BenchConfig:
    """One size of the comparison: resolution, batch, per-peer training budget, eval size."""

    size: int
    batch_size: int
    minutes: float
    eval_images: int
    eval_batch: int


CONFIGS = {
    "cpu": BenchConfig(size=32, batch_size=64, minutes=9.0, eval_images=661, eval_batch=64),
    "gpu": BenchConfig(size=64, batch_size=128, minutes=30.0, eval_images=2000, eval_batch=250),
}

# (label, model class, config): sized to ~8 M parameters; FLOPs follow from each design
PEERS = {
    "fractal": (
        "FractalTransformer (ours, preset small)",
        FractalTransformer,
        model_preset("small", cond_dim=384, cross_attention_levels=1),
    ),
    "hdit": ("HDiT (from the paper, shifted windows)", HDiT, HDiTConfig(depths=(1, 1, 4))),
    "dit": ("DiT (diffusers PixArtTransformer2DModel)", DiTPeer, DiTConfig(patch_size=4, depth=6, heads=4)),
    "unet": (
        "UNet (diffusers UNet2DConditionModel)",
        UNetPeer,
        UNetConfig(block_out_channels=(32, 64, 128), layers_per_block=2),
    ),
}


def train_config(bench: BenchConfig, steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=bench.batch_size,
        image_size=bench.size,
        learning_rate=1e-3,
        warmup_steps=min(100, max(1, steps // 10)),
        checkpoint_every=0,
        sample_every=0,
        log_every=25,
    )


def probe_images_per_s(model_class, model_config, bench: BenchConfig, dataset, encoder, out: Path, device) -> float:
    """Training speed from 3 warm-up + 6 timed steps (a throw-away trainer)."""
    trainer = Trainer(
        model_config,
        train_config(bench, 10),
        dataset,
        out,
        device=device,
        progress=False,
        text_encoder=encoder,
        model_class=model_class,
    )
    for _ in range(3):
        trainer.train_step()
    started = time.perf_counter()
    for _ in range(6):
        trainer.train_step()
    return 6 * bench.batch_size / (time.perf_counter() - started)


def run_peer(name: str, bench: BenchConfig, dataset, held_out, encoder, alignment, out: Path, device) -> dict:
    label, model_class, model_config = PEERS[name]
    model_config = type(model_config).from_dict({**model_config.to_dict(), "sample_size": bench.size})
    probe = probe_images_per_s(model_class, model_config, bench, dataset, encoder, out / name / "probe", device)
    steps = max(20, int(bench.minutes * 60 * probe / bench.batch_size))
    trainer = Trainer(
        model_config,
        train_config(bench, steps),
        dataset,
        out / name,
        device=device,
        text_encoder=encoder,
        model_class=model_class,
    )
    summary = trainer.train(max_seconds=bench.minutes * 60 * 1.15)
    trainer.export(out / name / "model")
    model = trainer.ema.module.eval()
    pipeline = FractalFlowPipeline(model, device=device, source=f"peer:{name}", text_encoder=encoder)
    settings = EvalSettings(num_images=bench.eval_images, size=bench.size, batch_size=bench.eval_batch)
    report = evaluate(pipeline, held_out, settings, alignment=alignment)
    return {
        "peer": name,
        "label": label,
        "model_config": model_config.to_dict(),
        "parameters": report["parameters"],
        "gflops_per_forward": forward_flops(model, bench.size) / 1e9,
        "probe_images_per_s": probe,
        "planned_steps": steps,
        "train": summary,
        "eval": report,
    }


def print_table(rows: list[dict], bench: BenchConfig) -> None:
    header = (
        f"{'network':44s} {'params':>7s} {'GFLOPs':>7s} {'train img/s':>11s} {'steps':>6s} {'loss':>6s} "
        f"{'FD':>7s} {'prec':>5s} {'rec':>5s} {'top1':>5s} {'top5':>5s} {'halluc':>6s} {'s/img':>6s}"
    )
    print(f"\n{bench.size} px, {bench.minutes:g} min of training each, eval on {bench.eval_images} held-out captions")
    print(header)
    print("-" * len(header))
    for row in rows:
        m, train = row["eval"]["metrics"], row["train"]
        print(
            f"{row['label']:44s} {row['parameters'] / 1e6:6.2f}M {row['gflops_per_forward']:7.3f} "
            f"{train['images_per_s']:11.1f} {train['step']:6d} {train['final_loss']:6.4f} "
            f"{m['fd_effnet_l0']:7.1f} {m['precision']:5.3f} {m['recall']:5.3f} {m['alignment_top1']:5.3f} "
            f"{m['alignment_top5']:5.3f} {m['hallucination_rate']:6.3f} {row['eval']['seconds_per_image']:6.3f}"
        )
    if rows:
        ceiling = rows[0]["eval"]["real_held_out"]
        print(f"real held-out images: top1 {ceiling['alignment_top1']:.3f}, top5 {ceiling['alignment_top5']:.3f}")


GRID_PROMPTS = [
    "red heart",
    "cat face, twemoji style",
    "bicycle icon",
    "grinning face, openmoji style",
    "bell icon, notification",
    "pizza, noto style",
    "rocket",
    "sun with face",
]


def write_grid(names: list[str], out: Path, size: int, encoder, path: Path) -> None:
    """One row per trained peer (the same prompts and seeds), labelled, nearest-neighbour 2x."""
    rows = []
    for name in names:
        folder = out / name / "model"
        if not (folder / "config.json").is_file():
            continue
        model_class = PEERS[name][1]
        # built for real, not on the meta device: diffusers models hold buffers outside the state dict
        model = model_class(model_class.config_class.load_json(folder / "config.json"))
        model.load_state_dict(load_state(folder))
        pipeline = FractalFlowPipeline(model, source=name, text_encoder=encoder)
        row = pipeline.generate(GRID_PROMPTS, steps=20, seed=0, size=size).grid(columns=len(GRID_PROMPTS))
        rows.append((PEERS[name][0], row.resize((row.width * 2, row.height * 2), Image.NEAREST)))
    if not rows:
        return
    label_height = 14
    grid = Image.new("RGB", (rows[0][1].width, len(rows) * (rows[0][1].height + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (label, row) in enumerate(rows):
        top = i * (row.height + label_height)
        draw.text((2, top + 1), label, fill="black")
        grid.paste(row, (0, top + label_height))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="comparison size (default: cpu)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per peer (default: the config's)")
    parser.add_argument("--n", type=int, default=None, help="images to evaluate per peer (default: the config's)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--out", default="runs/peers", help="run folder (TensorBoard logs per peer)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--fresh", action="store_true", help="re-measure peers already in the results file")
    parser.add_argument("--grid-only", action="store_true", help="only draw the sample grid from the trained peers")
    args = parser.parse_args()

    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; choose from {sorted(PEERS)}")
    bench = CONFIGS[args.config]
    bench = BenchConfig(
        size=bench.size,
        batch_size=bench.batch_size,
        minutes=args.minutes or bench.minutes,
        eval_images=args.n or bench.eval_images,
        eval_batch=bench.eval_batch,
    )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_float32_matmul_precision("high")
    grid_path = REPO / "docs" / "images" / f"peers-{args.config}.png"
    if args.grid_only:
        write_grid(names, Path(args.out), bench.size, TextEncoder.from_pretrained(device=device), grid_path)
        return
    dataset = load_emoji(args.data, image_size=64, split="train")
    held_out = load_emoji(args.data, image_size=64, split="eval")
    encoder = TextEncoder.from_pretrained(device=device, cache_size=len(dataset) * 4 + len(held_out) + 1024)
    alignment = load_alignment_encoder()
    path = RESULTS / f"peers-{args.config}.json"
    settings = {**bench.__dict__, "hardware": describe_device(device), "torch": torch.__version__}
    previous = json.loads(path.read_text()) if path.is_file() and not args.fresh else {}
    rows = [r for r in previous.get("peers", []) if previous.get("settings") == settings and r["peer"] in names]
    done = {r["peer"] for r in rows}
    for name in names:
        if name in done:
            continue
        print(f"== {name}: {PEERS[name][0]}", flush=True)
        rows.append(run_peer(name, bench, dataset, held_out, encoder, alignment, Path(args.out), device))
        rows.sort(key=lambda r: names.index(r["peer"]))
        atomic_write_text(path, json.dumps({"settings": settings, "peers": rows}, indent=2) + "\n")
    print_table(rows, bench)
    print(f"wrote {path}")
    write_grid(names, Path(args.out), bench.size, encoder, grid_path)


if __name__ == "__main__":
    main()
