"""Peers side by side: our FractalTransformer against the networks users would pick instead,
trained and measured in one run under the same budget, so only the network differs.

Every peer gets the same data (the emoji/icon training split, every caption encoded before
the first run so no run pays for text encoding), resolution, MiniLM text features with 10 %
condition dropout, rectified-flow objective (logit-normal times),
optimizer (AdamW, warm-up + cosine, clipping, EMA), batch size and **wall-clock
budget**: a short timed probe measures each network's training speed, which sets its
step count so the cosine schedule ends when the budget does. Each is then evaluated with
``fractalflow eval``'s metrics on the held-out captions (Euler, 20 steps, guidance 3),
concept retrieval included.

    python benchmarks/peers.py --config cpu   # ~1 h on 2 CPU cores, 32 px
    python benchmarks/peers.py --config cpu --peers fractal,hdit --seeds 0,1   # with the spread
    python benchmarks/peers.py --config gpu   # 64 px, longer budget, one GPU

Prints a table and writes ``benchmarks/results/peers-<config>.json`` after every run;
re-running skips (peer, seed) runs already measured with the same settings (``--fresh`` to redo).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
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
from fractalflow.evaluation.concepts import asked_concept_images
from fractalflow.evaluation.evaluate import EvalSettings, concept_gallery, eval_rows, evaluate
from fractalflow.evaluation.features import EffNetFeatures
from fractalflow.files import atomic_path, atomic_write_text
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device, resolve_device
from fractalflow.model.flops import forward_flops
from fractalflow.model.text import TextEncoder
from fractalflow.model.transformer import FractalTransformer
from fractalflow.model.weights import load_state
from fractalflow.training import Trainer
from fractalflow.training.curriculum import Stage, parse_curriculum

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
        "FractalTransformer (ours, preset small: AdaRMSNorm)",
        FractalTransformer,
        model_preset("small", cond_dim=384, cross_attention_levels=1),
    ),
    "fractal-p4": (
        "FractalTransformer (ours, preset small at patch 4)",
        FractalTransformer,
        model_preset("small", cond_dim=384, cross_attention_levels=1, patch_size=4),
    ),
    "fractal-x0p4": (
        "FractalTransformer (ours, preset small at patch 4, x0 prediction)",
        FractalTransformer,
        model_preset("small", cond_dim=384, cross_attention_levels=1, patch_size=4, prediction="x0"),
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


def probe_seconds_per_step(
    model_class, model_config, bench: BenchConfig, size: int, dataset, encoder, out: Path, device
) -> float:
    """Seconds per training step at ``size`` px, the batch scaled to keep the pixels per step
    (as a curriculum stage does), from 3 warm-up + 6 timed steps of a throw-away trainer."""
    batch = max(1, round(bench.batch_size * (bench.size / size) ** 2))
    config = dataclasses.replace(train_config(bench, 10), image_size=size, batch_size=batch)
    trainer = Trainer(
        model_config, config, dataset, out, device=device, progress=False, text_encoder=encoder,
        model_class=model_class,
    )  # fmt: skip
    for _ in range(3):
        trainer.train_step()
    started = time.perf_counter()
    for _ in range(6):
        trainer.train_step()
    return (time.perf_counter() - started) / 6


def plan_steps(model_class, model_config, bench: BenchConfig, curriculum: str, dataset, encoder, out, device) -> dict:
    """The step count that fills the wall-clock budget: probed at the benchmark size, and at
    each curriculum stage's sizes (a stage's steps cost what its sizes cost, in proportion)."""
    stages = parse_curriculum(curriculum) if curriculum else (Stage((bench.size,), None, "", 1.0),)
    sizes = sorted({size for stage in stages for size in stage.sizes} | {bench.size})
    seconds = {
        size: probe_seconds_per_step(model_class, model_config, bench, size, dataset, encoder, out, device)
        for size in sizes
    }
    per_step = sum(stage.share * statistics.fmean(seconds[s] for s in stage.sizes) for stage in stages)
    return {
        "steps": max(20, int(bench.minutes * 60 / per_step)),
        "probe_images_per_s": bench.batch_size / seconds[bench.size],
        "probe_seconds_per_step": {str(size): value for size, value in seconds.items()},
    }


def load_splits(folder: str) -> dict:
    """The training and held-out splits of the prepared emoji folder."""
    return {"folder": folder, "train": load_emoji(folder, 64, "train"), "held_out": load_emoji(folder, 64, "eval")}


def add_run_inputs(data: dict, eval_images: int, size: int, device) -> None:
    """What training and evaluating runs need besides the splits, added to ``data``: the text
    encoder with every caption encoded (minutes on a CPU, so only when a run is pending), the
    alignment encoder, and the concept-retrieval gallery of the held-out emoji concepts evaluated."""
    train, held_out = data["train"], data["held_out"]
    encoder = TextEncoder.from_pretrained(device=device, cache_size=10**7)
    started = time.perf_counter()
    encoder.encode([c for variants in train.caption_variants for c in variants] + held_out.captions)
    print(f"encoded every caption in {time.perf_counter() - started:.0f} s", flush=True)
    images = asked_concept_images(data["folder"], held_out, eval_rows(eval_images, len(held_out)), 64)
    data.update(
        encoder=encoder,
        alignment=load_alignment_encoder(),
        gallery=concept_gallery(images, EffNetFeatures(size=EvalSettings().feature_size), size),
    )


def data_settings(data: dict) -> dict:
    """What identifies the data a result was measured on (its sizes)."""
    return {"train_images": len(data["train"]), "held_out_images": len(data["held_out"])}


def train_and_evaluate(
    name: str, model_class, model_config, train_overrides: dict, bench: BenchConfig, data: dict, out: Path, device
) -> dict:
    """Probe, train for the wall-clock budget, evaluate the EMA model: the row of one run."""
    model_config = type(model_config).from_dict({**model_config.to_dict(), "sample_size": bench.size})
    encoder = data["encoder"]
    curriculum = train_overrides.get("curriculum", "")
    plan = plan_steps(model_class, model_config, bench, curriculum, data["train"], encoder, out / "probe", device)
    config = dataclasses.replace(train_config(bench, plan["steps"]), **train_overrides)
    trainer = Trainer(model_config, config, data["train"], out, device, text_encoder=encoder, model_class=model_class)
    summary = trainer.train(max_seconds=bench.minutes * 60 * 1.15)
    trainer.export(out / "model")
    model = trainer.ema.module.eval()
    pipeline = FractalFlowPipeline(model, device=device, source=name, text_encoder=encoder)
    settings = EvalSettings(
        num_images=bench.eval_images, batch_size=bench.eval_batch, generation=GenerationConfig(size=bench.size)
    )
    report = evaluate(pipeline, data["held_out"], settings, data["alignment"], gallery=data["gallery"])
    return {
        "model_config": model_config.to_dict(),
        "train_config": config.to_dict(),
        "parameters": report["parameters"],
        "gflops_per_forward": forward_flops(model, bench.size) / 1e9,
        "probe_images_per_s": plan["probe_images_per_s"],
        "probe_seconds_per_step": plan["probe_seconds_per_step"],
        "planned_steps": plan["steps"],
        "train": summary,
        "history": trainer.history,
        "eval": report,
    }


def run_peer(name: str, seed: int, bench: BenchConfig, data: dict, out: Path, device) -> dict:
    label, model_class, model_config = PEERS[name]
    row = train_and_evaluate(
        f"peer:{name}", model_class, model_config, {"seed": seed}, bench, data, out / f"{name}-{seed}", device
    )
    return {"peer": name, "seed": seed, "label": label, **row}


def pending_runs(rows: list[dict], key: str, names: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The (name, seed) runs not in ``rows`` yet (``key`` names the run: peer or variant), seed by seed."""
    return [(n, s) for s in seeds for n in names if not any(r[key] == n and r["seed"] == s for r in rows)]


METRICS = ("fd_effnet_l0", "precision", "recall", "alignment_top5", "concept_retrieval")


def seed_summary(rows: list[dict], key: str) -> dict[str, dict]:
    """Per peer (or variant) over its seeds: mean and spread (max - min) of each metric and of train images/s."""
    summary = {}
    for name in dict.fromkeys(r[key] for r in rows):
        runs = [r for r in rows if r[key] == name]
        values = {m: [r["eval"]["metrics"][m] for r in runs] for m in METRICS}
        values["images_per_s"] = [r["train"]["images_per_s"] for r in runs]
        summary[name] = {
            m: {"mean": statistics.fmean(v), "spread": max(v) - min(v), "seeds": len(v)} for m, v in values.items()
        }
    return summary


def print_table(rows: list[dict], bench: BenchConfig) -> None:
    header = (
        f"{'network':52s} {'seed':>4s} {'params':>7s} {'GFLOPs':>7s} {'img/s':>6s} {'steps':>5s} {'loss':>6s} "
        f"{'FD':>7s} {'prec':>5s} {'rec':>5s} {'top5':>5s} {'concept':>7s} {'s/img':>6s}"
    )
    print(f"\n{bench.size} px, {bench.minutes:g} min of training each, eval on {bench.eval_images} held-out captions")
    print(header)
    print("-" * len(header))
    for row in rows:
        m, train = row["eval"]["metrics"], row["train"]
        print(
            f"{row['label']:52s} {row['seed']:>4d} {row['parameters'] / 1e6:6.2f}M {row['gflops_per_forward']:7.3f} "
            f"{train['images_per_s']:6.1f} {train['step']:5d} {train['final_loss']:6.4f} "
            f"{m['fd_effnet_l0']:7.1f} {m['precision']:5.3f} {m['recall']:5.3f} {m['alignment_top5']:5.3f} "
            f"{m['concept_retrieval']:7.3f} {row['eval']['seconds_per_image']:6.3f}"
        )
    if rows:
        real, m = rows[0]["eval"]["real_held_out"], rows[0]["eval"]["metrics"]
        print(
            f"real held-out: top5 {real['alignment_top5']:.3f}, concept retrieval {real['concept_retrieval']:.3f} "
            f"(chance {m['concept_chance']:.3f})"
        )
    for name, summary in seed_summary(rows, "peer").items():
        if summary["fd_effnet_l0"]["seeds"] > 1:
            print(f"{name}: " + ", ".join(f"{m} {v['mean']:.3f} ± {v['spread'] / 2:.3f}" for m, v in summary.items()))


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
    """One row per trained peer (its seed-0 run; the same prompts and sampling seeds), labelled,
    nearest-neighbour 2x."""
    rows = []
    for name in names:
        folder = out / f"{name}-0" / "model"
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
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
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
    device = resolve_device(args.device)
    torch.set_float32_matmul_precision("high")
    grid_path = REPO / "docs" / "images" / f"peers-{args.config}.png"
    if args.grid_only:
        write_grid(names, Path(args.out), bench.size, TextEncoder.from_pretrained(device=device), grid_path)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_splits(args.data)
    path = RESULTS / f"peers-{args.config}.json"
    settings = {
        **bench.__dict__,
        **data_settings(data),
        "hardware": describe_device(device),
        "torch": torch.__version__,
    }
    previous = json.loads(path.read_text()) if path.is_file() and not args.fresh else {}
    rows = previous.get("peers", []) if previous.get("settings") == settings else []
    pending = pending_runs(rows, "peer", names, seeds)
    if pending:
        add_run_inputs(data, bench.eval_images, bench.size, device)
    for name, seed in pending:
        print(f"== {name} (seed {seed}): {PEERS[name][0]}", flush=True)
        rows.append(run_peer(name, seed, bench, data, Path(args.out), device))
        rows.sort(key=lambda r: (list(PEERS).index(r["peer"]), r["seed"]))
        payload = {"settings": settings, "peers": rows, "summary": seed_summary(rows, "peer")}
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    print_table(rows, bench)
    print(f"wrote {path}")
    encoder = data.get("encoder") or TextEncoder.from_pretrained(device=device)
    write_grid(names, Path(args.out), bench.size, encoder, grid_path)


if __name__ == "__main__":
    main()
