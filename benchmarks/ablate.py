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
    python benchmarks/ablate.py --variants adarmsnorm,curriculum --minutes 9

Results go to ``benchmarks/results/ablate-cpu.json`` after every run, one group per setting
(budget, eval size, hardware); runs already in the group are kept, so a long ablation can be
spread over several sessions. The final two-seed comparison with HDiT is ``peers.py --seeds``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hdit import HDiT, HDiTConfig
from peers import (
    BenchConfig,
    add_run_inputs,
    data_settings,
    load_splits,
    pending_runs,
    seed_summary,
    train_and_evaluate,
)

from fractalflow import model_preset
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device, resolve_device
from fractalflow.model.transformer import FractalTransformer

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
# preset small in the first block design: every variant changes one thing from here
BASE = dict(cond_dim=384, cross_attention_levels=1, modulation="adaln-zero")
# name: (what changes, model class, model config overrides of BASE, train config overrides)
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
    "patch4": ("AdaRMSNorm at patch 4 (4x fewer tokens, a cheaper network)", FractalTransformer,
               {"modulation": "adarmsnorm", "patch_size": 4}, {}),
    "x0-patch4": ("AdaRMSNorm at patch 4 with x0 prediction (Li & He's large-patch case)", FractalTransformer,
                  {"modulation": "adarmsnorm", "patch_size": 4, "prediction": "x0"}, {}),
    "curriculum": ("AdaRMSNorm + curriculum: 16 px for 40 % of the steps (4x batch), then 32 px",
                   FractalTransformer, {"modulation": "adarmsnorm"}, {"curriculum": "16:0.4,32:0.6"}),
}  # fmt: skip
LOSS_WINDOW = (300, 400)  # steps whose mean loss compares variants at equal steps


def build(name: str):
    _, model_class, overrides, _ = VARIANTS[name]
    if model_class is HDiT:
        return model_class, HDiTConfig(depths=(1, 1, 4))
    return model_class, model_preset("small", **{**BASE, **overrides})


def run_variant(name: str, seed: int, bench: BenchConfig, data: dict, out: Path, device) -> dict:
    model_class, model_config = build(name)
    train_overrides = {**VARIANTS[name][3], "seed": seed}
    row = train_and_evaluate(
        f"ablation:{name}", model_class, model_config, train_overrides, bench, data, out / f"{name}-{seed}", device
    )
    window = [p["loss"] for p in row["history"] if LOSS_WINDOW[0] < p["step"] <= LOSS_WINDOW[1]]
    return {
        "variant": name,
        "seed": seed,
        "label": VARIANTS[name][0],
        "loss_at_equal_steps": sum(window) / len(window) if window else None,
        **row,
    }


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'variant':12s} {'seed':>4s} {'params':>7s} {'GFLOPs':>6s} {'img/s':>6s} {'steps':>5s} {'seconds':>7s} "
        f"{'loss@300-400':>12s} {'FD':>6s} {'rec':>5s} {'top5':>5s} {'concept':>7s}"
    )
    print(header + "\n" + "-" * len(header))
    for row in rows:
        m, train, loss = row["eval"]["metrics"], row["train"], row["loss_at_equal_steps"]
        print(
            f"{row['variant']:12s} {row['seed']:>4d} {row['parameters'] / 1e6:6.2f}M {row['gflops_per_forward']:6.3f} "
            f"{train['images_per_s']:6.1f} {train['step']:5d} {train['seconds']:7.0f} "
            f"{'' if loss is None else f'{loss:.4f}':>12s} "
            f"{m['fd_effnet_l0']:6.1f} {m['recall']:5.3f} {m['alignment_top5']:5.3f} {m['concept_retrieval']:7.3f}"
        )
    if rows:
        real, m = rows[0]["eval"]["real_held_out"], rows[0]["eval"]["metrics"]
        print(
            f"real held-out: top5 {real['alignment_top5']:.3f}, concept retrieval {real['concept_retrieval']:.3f} "
            f"(chance {m['concept_chance']:.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    parser.add_argument("--minutes", type=float, default=9.0, help="training budget per run (default: 9)")
    parser.add_argument("--n", type=int, default=500, help="held-out captions to evaluate (default: 500)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument("--out", default="runs/ablate", help="run folder (TensorBoard logs per run)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--fresh", action="store_true", help="re-measure these variants and seeds if already there")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    bench = BenchConfig(size=32, batch_size=64, minutes=args.minutes, eval_images=args.n, eval_batch=100)
    device = resolve_device(args.device)
    path = RESULTS / f"ablate-{device.type}.json"
    data = load_splits(args.data)
    settings = {
        **bench.__dict__,
        **data_settings(data),
        "hardware": describe_device(device),
        "torch": torch.__version__,
    }
    groups = json.loads(path.read_text())["groups"] if path.is_file() else []
    group = next((g for g in groups if g["settings"] == settings), None)
    if group is None:
        group = {"settings": settings, "runs": []}
        groups.append(group)
    if args.fresh:
        group["runs"] = [r for r in group["runs"] if not (r["variant"] in names and r["seed"] in seeds)]
    rows = group["runs"]
    pending = pending_runs(rows, "variant", names, seeds)
    if pending:
        add_run_inputs(data, bench.eval_images, bench.size, device)
    for name, seed in pending:
        print(f"== {name} (seed {seed}): {VARIANTS[name][0]}", flush=True)
        rows.append(run_variant(name, seed, bench, data, Path(args.out), device))
        rows.sort(key=lambda r: (r["seed"], list(VARIANTS).index(r["variant"])))
        group["summary"] = seed_summary(rows, "variant")
        atomic_write_text(path, json.dumps({"groups": groups}, indent=2) + "\n")
    print_table(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
