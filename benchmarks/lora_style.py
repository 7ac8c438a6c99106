"""LoRA fine-tuning on a style the default model never saw: EmojiOne v1.

The set comes from the npm package ``@iconify-json/emojione-v1`` (CC-BY-SA-4.0, installed into
``data/node_modules`` by ``make install``; not among the default model's 18 sources). Each
emoji is named by its code point's CLDR name, captioned "<name>, emojione v1 style".

1. Writes the set as two imagefolders under ``--work``: training, and held-out (a fifth of the
   concepts, ``sha1(key) % 5 == 0``).
2. Trains LoRA adapters (``--rank``) on the training folder from the shipped default model for
   ``--steps`` steps (``fractalflow train --init default --lora-rank``), timed on this CPU.
3. Draws every held-out caption with the base model and with the adapter (the same seeds) and
   measures FD-EffNetL0 and k-NN precision/recall against the held-out images.

Prints a table and writes ``results/lora-style.json``.

    python benchmarks/lora_style.py --steps 600
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
from fractalflow.evaluation.evaluate import EvalSettings, evaluate
from fractalflow.files import atomic_write_text
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/lora-style", help="folder for the data and the adapter")
    parser.add_argument("--steps", type=int, default=600, help="LoRA training steps (default: 600)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    args = parser.parse_args()
    work = REPO / args.work
    counts = write_imagefolders(REPO / "data" / "node_modules", work)
    train_set, held = load_imagefolder(work / "train", 64), load_imagefolder(work / "held-out", 64)

    base = load_model(default_model_folder())
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
    encoder = TextEncoder.from_pretrained()
    trainer = Trainer(replace(base.config, trained_sizes=()), config, train_set, work / "run", text_encoder=encoder)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    adapter = work / "run" / "model"
    adapter_bytes = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())

    settings = EvalSettings(num_images=len(held), fd_resamples=0)
    rows = []
    for name in ("base (shipped default)", f"+ LoRA rank {args.rank}"):
        pipeline = FractalFlowPipeline.default(device="cpu")
        if name.startswith("+"):
            pipeline.load_adapter(adapter)
        metrics = evaluate(pipeline, held, settings, progress=False)["metrics"]
        rows.append({"model": name, **{k: metrics[k] for k in ("fd_effnet_l0", "precision", "recall")}})
    base_fd = rows[0]["fd_effnet_l0"]
    print(f"{'model':24s} {'FD':>8s} {'x base':>7s} {'precision':>9s} {'recall':>7s}")
    for row in rows:
        fd = row["fd_effnet_l0"]
        print(f"{row['model']:24s} {fd:8.1f} {fd / base_fd:7.3f} {row['precision']:9.3f} {row['recall']:7.3f}")
    print(f"{counts}; {args.steps} steps in {train_seconds / 60:.1f} min; adapter {adapter_bytes / 2**20:.2f} MiB")
    payload = {
        "style": STYLE.style,
        "package": STYLE.package,
        "images": counts,
        "train": {**config.to_dict(), "seconds": train_seconds},
        "adapter_bytes": adapter_bytes,
        "eval": {"settings": settings.to_dict(), "rows": rows},
        "hardware": describe_device("cpu"),
    }
    atomic_write_text(RESULTS / "lora-style.json", json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
