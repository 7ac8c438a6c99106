"""LoRA fine-tuning on a style the default model never saw: EmojiOne v1.

The set comes from the npm package ``@iconify-json/emojione-v1`` (CC-BY-SA-4.0, installed into
``data/node_modules`` by ``make install``; not among the default model's 18 sources). Each
emoji is named by its code point's CLDR name, captioned "<name>, emojione v1 style".

1. Writes the set as two imagefolders under ``--work``: training, and held-out (a fifth of the
   concepts, ``sha1(key) % 5 == 0``).
2. Trains LoRA adapters (``--rank``) on the training folder from the shipped default model for
   ``--steps`` steps (``fractalflow train --init default --lora-rank``), timed on this CPU.
3. Draws every held-out caption with the base model and with the adapter (the same seeds, the
   base model's sampling defaults) and measures FD-EffNetL0 and k-NN precision/recall against the held-out images.

Prints a table and writes ``results/lora-style.json``; adapters trained before with other
settings (same base model, data and eval) are kept in it, so runs build a sweep.

    python benchmarks/lora_style.py --steps 600
    python benchmarks/lora_style.py --steps 200 --learning-rate 5e-4 --rank 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from fractalflow import FractalFlowPipeline, TrainConfig
from fractalflow.data.emoji import rasterise
from fractalflow.data.emoji_names import EmojiNames
from fractalflow.data.emoji_sources import Source, find_iconify_emoji
from fractalflow.data.sources import load_imagefolder
from fractalflow.evaluation.evaluate import EvalSettings, evaluate, model_fingerprint
from fractalflow.files import atomic_write_text
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device
from fractalflow.model.text import TextEncoder
from fractalflow.model.weights import load_model
from fractalflow.pipeline import default_model_folder
from fractalflow.training import Trainer

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
STYLE = Source("emojione-v1", "@iconify-json/emojione-v1", "emoji", "emojione v1 style", find_iconify_emoji)


def held_out(key: str) -> bool:
    return int(hashlib.sha1(f"{STYLE.name}:{key}".encode()).hexdigest(), 16) % 5 == 0


def write_imagefolders(node_modules: Path, work: Path, size: int = 64) -> dict[str, int]:
    """``work/train`` and ``work/held-out`` imagefolders of the set (written once)."""
    splits = ("train", "held-out")
    if (work / "held-out" / "metadata.jsonl").is_file():
        return {split: len((work / split / "metadata.jsonl").read_text().splitlines()) for split in splits}
    names = EmojiNames.from_emojibase(node_modules / "emojibase-data")
    records = list(STYLE.find(node_modules / STYLE.package, names))
    counts = {}
    for split in splits:
        folder = work / split
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [r for r in records if held_out(r.key) == (split == "held-out")]
        lines = []
        for record in chosen:
            file_name = f"{record.key}.png"
            Image.fromarray(rasterise(record, size)).save(folder / file_name)
            lines.append(json.dumps({"file_name": file_name, "text": record.caption()}))
        atomic_write_text(folder / "metadata.jsonl", "\n".join(lines) + "\n")
        counts[split] = len(chosen)
    return counts


def evaluate_fd(pipeline: FractalFlowPipeline, held: object, settings: EvalSettings) -> dict:
    """FD-EffNetL0 and precision/recall of ``pipeline`` on the held-out style images."""
    metrics = evaluate(pipeline, held, settings, progress=False)["metrics"]
    return {k: metrics[k] for k in ("fd_effnet_l0", "precision", "recall")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/lora-style", help="folder for the data and the adapters")
    parser.add_argument("--steps", type=int, default=600, help="LoRA training steps (default: 600)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    args = parser.parse_args()
    work = REPO / args.work
    counts = write_imagefolders(REPO / "data" / "node_modules", work)
    train_set, held = load_imagefolder(work / "train", 64), load_imagefolder(work / "held-out", 64)
    sampling = GenerationConfig.for_model(default_model_folder())  # what a user of the base model gets
    settings = EvalSettings(num_images=len(held), fd_resamples=0, generation=sampling)
    out = RESULTS / "lora-style.json"
    header = {
        "style": STYLE.style,
        "package": STYLE.package,
        "images": counts,
        "model_sha256": model_fingerprint(load_model(default_model_folder())),
        "eval_settings": settings.to_dict(),
        "hardware": describe_device("cpu"),
    }
    header = json.loads(json.dumps(header))  # as read back (tuples become lists)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    same = {k: previous.get(k) for k in header} == header
    base = previous["base"] if same else evaluate_fd(FractalFlowPipeline.default(device="cpu"), held, settings)
    runs = previous.get("runs", []) if same else []

    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        image_size=64,
        learning_rate=args.learning_rate,
        warmup_steps=min(50, args.steps // 10),
        init="default",
        lora_rank=args.rank,
        checkpoint_every=0,
        log_every=50,
    )
    name = f"rank {args.rank}, {args.steps} steps of {args.batch_size}, lr {args.learning_rate:g}"
    run_folder = work / "runs" / f"r{args.rank}-s{args.steps}-b{args.batch_size}-lr{args.learning_rate:g}"
    base_model = load_model(default_model_folder())
    encoder = TextEncoder.from_pretrained()
    trainer = Trainer(replace(base_model.config, trained_sizes=()), config, train_set, run_folder, text_encoder=encoder)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    adapter = run_folder / "model"
    adapter_bytes = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())
    pipeline = FractalFlowPipeline.default(device="cpu")
    pipeline.load_adapter(adapter)
    row = {"model": f"+ LoRA {name}", "train": config.to_dict(), "seconds": train_seconds}
    row["adapter_bytes"] = adapter_bytes
    runs = [r for r in runs if r["model"] != row["model"]] + [{**row, **evaluate_fd(pipeline, held, settings)}]
    atomic_write_text(out, json.dumps({**header, "base": base, "runs": runs}, indent=2) + "\n")

    print(f"{'model':52s} {'FD':>8s} {'x base':>7s} {'precision':>9s} {'recall':>7s} {'train min':>9s}")
    for r in [{"model": "base (shipped default)", **base}, *runs]:
        fd, minutes = r["fd_effnet_l0"], f"{r['seconds'] / 60:9.1f}" if "seconds" in r else ""
        ratio = fd / base["fd_effnet_l0"]
        print(f"{r['model']:52s} {fd:8.1f} {ratio:7.3f} {r['precision']:9.3f} {r['recall']:7.3f} {minutes:>9s}")
    print(f"{counts}; adapter {adapter_bytes / 2**20:.2f} MiB; wrote {out}")


if __name__ == "__main__":
    main()
