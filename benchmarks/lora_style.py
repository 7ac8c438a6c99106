"""LoRA fine-tuning on a style the default model never saw: EmojiOne v1.

The set comes from the npm package ``@iconify-json/emojione-v1`` (CC-BY-SA-4.0, installed into
``data/node_modules`` by ``make install``; not among the default model's 18 sources). Each
emoji is named by its code point's CLDR name, captioned "<name>, emojione v1 style".

1. Writes the set as two imagefolders under ``--work``: training, and held-out (a fifth of the
   concepts, ``sha1(key) % 5 == 0``).
2. Trains LoRA adapters (``--rank``) on the training folder from the shipped default model for
   ``--steps`` steps (``fractalflow train --init default --lora-rank``), timed on this CPU.
3. Draws every held-out caption with the base model and with the adapter (the same seeds, the
   base model's sampling defaults) and measures FD-EffNetL0 and k-NN precision/recall against
   the held-out images; with ``--seeds K``, K times over with other seeds (image i of draw k
   has seed ``10000 k + i``), so an FD difference can be told from the spread between draws.

Prints a table and writes ``results/lora-style.json``; adapters trained before with other
settings (same base model, data and eval) are kept in it, so runs build a sweep.

    python benchmarks/lora_style.py --steps 600
    python benchmarks/lora_style.py --steps 200 --learning-rate 5e-4 --rank 4
    python benchmarks/lora_style.py --no-train --seeds 5    # the base and every kept adapter, 5 draws each
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
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


SEED_STRIDE = 10_000  # draw k's image i has seed SEED_STRIDE * k + i


def evaluate_fd(pipeline: FractalFlowPipeline, held: object, settings: EvalSettings, seeds: int = 1) -> dict:
    """FD-EffNetL0 and precision/recall of ``pipeline`` on the held-out style images (the first
    draw's), and the FD of each of ``seeds`` draws (``fd_by_seed``)."""
    draws = [
        evaluate(pipeline, held, replace(settings, seed=SEED_STRIDE * k), progress=False)["metrics"]
        for k in range(seeds)
    ]
    return {
        **{k: draws[0][k] for k in ("fd_effnet_l0", "precision", "recall")},
        "fd_by_seed": [draw["fd_effnet_l0"] for draw in draws],
    }


def fd_draws(row: dict) -> list[float]:
    """A row's FD of each draw (rows written before draws were kept hold one)."""
    return row.get("fd_by_seed", [row["fd_effnet_l0"]])


def spread(values: list[float]) -> str:
    """``mean ± sample sd`` (the value alone for one draw)."""
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) < 2 else f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def print_table(base: dict, runs: list[dict]) -> None:
    """FD per model as the mean over its draws, and its ratio to the base's, draw by draw."""
    print(f"{'model':46s} {'draws':>5s} {'FD, mean':>9s} {'x base, mean ± sd':>18s} {'precision':>9s} {'recall':>7s}")
    for row in [{"model": "base (shipped default)", **base}, *runs]:
        ratios = [fd / b for fd, b in zip(fd_draws(row), fd_draws(base))]
        print(
            f"{row['model'][:46]:46s} {len(fd_draws(row)):5d} {statistics.fmean(fd_draws(row)):9.1f} "
            f"{spread(ratios):>18s} {row['precision']:9.3f} {row['recall']:7.3f}"
        )


def adapted(run_folder: Path) -> FractalFlowPipeline:
    """The shipped default with the adapter trained in ``run_folder``."""
    pipeline = FractalFlowPipeline.default(device="cpu")
    pipeline.load_adapter(run_folder / "model")
    return pipeline


def run_folder_name(rank: int, steps: int, batch_size: int, learning_rate: float) -> str:
    return f"r{rank}-s{steps}-b{batch_size}-lr{learning_rate:g}"


def train_adapter(args: argparse.Namespace, work: Path, train_set: object) -> dict:
    """Train the adapter ``args`` asks for; its row without the eval."""
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
    folder = work / "runs" / run_folder_name(args.rank, args.steps, args.batch_size, args.learning_rate)
    base_model = load_model(default_model_folder())
    encoder = TextEncoder.from_pretrained()
    trainer = Trainer(replace(base_model.config, trained_sizes=()), config, train_set, folder, text_encoder=encoder)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    adapter_bytes = sum(p.stat().st_size for p in (folder / "model").iterdir() if p.is_file())
    print(f"adapter {adapter_bytes / 2**20:.2f} MiB, trained in {seconds / 60:.1f} min")
    name = f"+ LoRA rank {args.rank}, {args.steps} steps of {args.batch_size}, lr {args.learning_rate:g}"
    return {"model": name, "train": config.to_dict(), "seconds": seconds, "adapter_bytes": adapter_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/lora-style", help="folder for the data and the adapters")
    parser.add_argument("--steps", type=int, default=600, help="LoRA training steps (default: 600)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    parser.add_argument("--seeds", type=int, default=1, help="draws of the held-out captions per model (default: 1)")
    parser.add_argument(
        "--no-train", action="store_true", help="train nothing: draw the base and every kept adapter --seeds times"
    )
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: draw at least once")
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
    base = previous["base"] if same else None
    if base is None or len(fd_draws(base)) < args.seeds:
        base = evaluate_fd(FractalFlowPipeline.default(device="cpu"), held, settings, args.seeds)
    runs = previous.get("runs", []) if same else []
    if args.no_train:
        runs = [{**row, **evaluate_fd(adapted(folder_of(work, row)), held, settings, args.seeds)} for row in runs]
    else:
        row = train_adapter(args, work, train_set)
        row.update(evaluate_fd(adapted(folder_of(work, row)), held, settings, args.seeds))
        runs = [r for r in runs if r["model"] != row["model"]] + [row]
    atomic_write_text(out, json.dumps({**header, "base": base, "runs": runs}, indent=2) + "\n")
    print_table(base, runs)
    print(f"{counts}; wrote {out}")


def folder_of(work: Path, row: dict) -> Path:
    """The run folder of a row's adapter, from its training settings."""
    train = row["train"]
    return (
        work / "runs" / run_folder_name(train["lora_rank"], train["steps"], train["batch_size"], train["learning_rate"])
    )


if __name__ == "__main__":
    main()
