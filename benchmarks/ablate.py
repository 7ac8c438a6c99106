"""Ablations of the fractal transformer at equal wall-clock: one design change at a time
against the baseline (preset small), with HDiT trained in the same run as the reference.

Every variant gets the peers benchmark's setting (``peers.py``: the emoji/icon training
split, MiniLM text features, rectified flow, AdamW with warm-up + cosine, EMA, batch 64 at
32 px) and the same **wall-clock budget**: a timed probe sets its step count. All caption
variants are encoded once before the first run, so no run pays for text encoding. Each is
then measured on ``--n`` held-out captions (spread over the split): FD-EffNetL0,
precision/recall, alignment top-5 and concept retrieval, plus its training images/s and its
loss averaged over a fixed window of steps (equal steps, whatever the speed).

    python benchmarks/ablate.py --minutes 6                     # a screen: every variant, seed 0
    python benchmarks/ablate.py --variants baseline,x0 --seeds 0,1 --minutes 9

Results go to ``benchmarks/results/ablate-cpu.json`` after every run; runs already there
with the same settings are kept, so a long ablation can be spread over several sessions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from hdit import HDiT, HDiTConfig
from peers import BenchConfig, probe_images_per_s, train_config

from fractalflow import FractalFlowPipeline, model_preset
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.concepts import is_emoji_concept
from fractalflow.evaluation.evaluate import EvalSettings, concept_gallery, eval_rows, evaluate
from fractalflow.evaluation.features import EffNetFeatures
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.model.flops import forward_flops
from fractalflow.model.text import TextEncoder
from fractalflow.model.transformer import FractalTransformer
from fractalflow.training import Trainer

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BASE = dict(cond_dim=384, cross_attention_levels=1)
# name: (what changes, model class, model config overrides of preset small, train config overrides)
VARIANTS = {
    "baseline": ("preset small: adaLN-Zero, QK-RMSNorm, GEGLU, velocity", FractalTransformer, {}, {}),
    "hdit": ("HDiT (the peer, from the paper)", HDiT, None, {}),
    "adarmsnorm": ("AdaRMSNorm modulation (HDiT's) instead of adaLN-Zero", FractalTransformer,
                   {"modulation": "adarmsnorm"}, {}),
    "cosine": ("cosine attention with a learned scale instead of QK-RMSNorm", FractalTransformer,
               {"attention_norm": "cosine"}, {}),
    "gelu": ("GELU MLP of equal size instead of GEGLU", FractalTransformer, {"feed_forward": "gelu"}, {}),
    "x0": ("x0 prediction, loss on velocity (Li & He 2025)", FractalTransformer, {"prediction": "x0"}, {}),
    "cross2": ("cross-attention at the two coarsest levels", FractalTransformer, {"cross_attention_levels": 2}, {}),
    "late-t": ("logit-normal times centred nearer the data (mean -0.5)", FractalTransformer, {},
               {"timestep_mean": -0.5}),
}  # fmt: skip
LOSS_WINDOW = (300, 400)  # steps whose mean loss compares variants at equal steps


def build(name: str):
    _, model_class, overrides, _ = VARIANTS[name]
    if model_class is HDiT:
        return model_class, HDiTConfig(depths=(1, 1, 4))
    return model_class, model_preset("small", **{**BASE, **overrides})


def run_variant(name: str, seed: int, bench: BenchConfig, data: dict, out: Path, device) -> dict:
    model_class, model_config = build(name)
    model_config = type(model_config).from_dict({**model_config.to_dict(), "sample_size": bench.size})
    train_overrides = {**VARIANTS[name][3], "seed": seed}
    encoder = data["encoder"]
    probe = probe_images_per_s(model_class, model_config, bench, data["train"], encoder, out / "probe", device)
    steps = max(20, int(bench.minutes * 60 * probe / bench.batch_size))
    config = dataclasses.replace(train_config(bench, steps), **train_overrides)
    trainer = Trainer(
        model_config, config, data["train"], out / f"{name}-{seed}", device, text_encoder=encoder,
        model_class=model_class,
    )  # fmt: skip
    summary = trainer.train(max_seconds=bench.minutes * 60 * 1.15)
    window = [p["loss"] for p in trainer.history if LOSS_WINDOW[0] < p["step"] <= LOSS_WINDOW[1]]
    model = trainer.ema.module.eval()
    pipeline = FractalFlowPipeline(model, device=device, source=f"ablation:{name}", text_encoder=encoder)
    settings = EvalSettings(num_images=bench.eval_images, size=bench.size, batch_size=bench.eval_batch)
    report = evaluate(pipeline, data["held_out"], settings, data["alignment"], gallery=data["gallery"])
    return {
        "variant": name,
        "seed": seed,
        "label": VARIANTS[name][0],
        "model_config": model_config.to_dict(),
        "train_config": config.to_dict(),
        "parameters": report["parameters"],
        "gflops_per_forward": forward_flops(model, bench.size) / 1e9,
        "probe_images_per_s": probe,
        "loss_at_equal_steps": sum(window) / len(window) if window else None,
        "train": summary,
        "eval": report,
    }


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'variant':12s} {'seed':>4s} {'params':>7s} {'GFLOPs':>6s} {'img/s':>6s} {'steps':>5s} "
        f"{'loss@300-400':>12s} {'FD':>6s} {'rec':>5s} {'top5':>5s} {'concept':>7s}"
    )
    print(header + "\n" + "-" * len(header))
    for row in rows:
        m, train, loss = row["eval"]["metrics"], row["train"], row["loss_at_equal_steps"]
        print(
            f"{row['variant']:12s} {row['seed']:>4d} {row['parameters'] / 1e6:6.2f}M {row['gflops_per_forward']:6.3f} "
            f"{train['images_per_s']:6.1f} {train['step']:5d} {'' if loss is None else f'{loss:.4f}':>12s} "
            f"{m['fd_effnet_l0']:6.1f} {m['recall']:5.3f} {m['alignment_top5']:5.3f} {m['concept_retrieval']:7.3f}"
        )
    if rows:
        real, m = rows[0]["eval"]["real_held_out"], rows[0]["eval"]["metrics"]
        print(
            f"real held-out: top5 {real['alignment_top5']:.3f}, concept retrieval {real['concept_retrieval']:.3f} "
            f"(chance {m['concept_chance']:.3f})"
        )


def load_data(args, bench: BenchConfig, device) -> dict:
    """Training split, held-out split, text encoder with every caption encoded, alignment
    encoder, and the concept-retrieval gallery of the held-out emoji concepts asked for."""
    train = load_emoji(args.data, image_size=64, split="train")
    held_out = load_emoji(args.data, image_size=64, split="eval")
    rows = eval_rows(bench.eval_images, len(held_out))
    encoder = TextEncoder.from_pretrained(device=device, cache_size=10**7)
    started = time.perf_counter()
    encoder.encode([c for variants in train.caption_variants for c in variants] + held_out.captions)
    print(f"encoded every caption in {time.perf_counter() - started:.0f} s", flush=True)
    concepts = {held_out.records[i].concept for i in rows if is_emoji_concept(held_out.records[i])}
    images = load_emoji(args.data, 64, split="all", keep=lambda record: record.concept in concepts)
    gallery = concept_gallery(images, EffNetFeatures(size=EvalSettings().feature_size), bench.size)
    return {"train": train, "held_out": held_out, "encoder": encoder, "alignment": load_alignment_encoder(),
            "gallery": gallery}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    parser.add_argument("--minutes", type=float, default=9.0, help="training budget per run (default: 9)")
    parser.add_argument("--n", type=int, default=500, help="held-out captions to evaluate (default: 500)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--out", default="runs/ablate", help="run folder (TensorBoard logs per run)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    bench = BenchConfig(size=32, batch_size=64, minutes=args.minutes, eval_images=args.n, eval_batch=100)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = RESULTS / f"ablate-{device.type}.json"
    settings = {**bench.__dict__, "hardware": describe_device(device), "torch": torch.__version__}
    previous = json.loads(path.read_text()) if path.is_file() else {}
    rows = previous.get("runs", []) if previous.get("settings") == settings else []
    todo = [(n, s) for s in seeds for n in names if not any(r["variant"] == n and r["seed"] == s for r in rows)]
    if todo:
        data = load_data(args, bench, device)
    for name, seed in todo:
        print(f"== {name} (seed {seed}): {VARIANTS[name][0]}", flush=True)
        rows.append(run_variant(name, seed, bench, data, Path(args.out), device))
        rows.sort(key=lambda r: (r["seed"], list(VARIANTS).index(r["variant"])))
        atomic_write_text(path, json.dumps({"settings": settings, "runs": rows}, indent=2) + "\n")
    print_table(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
