"""Train the default model shipped inside the package, and install it there.

Runs unchanged on a CPU or a CUDA machine with no network: it needs torch, safetensors,
numpy, Pillow, tqdm and the Fashion-MNIST files of the Debian package
``dataset-fashion-mnist``. Re-running it resumes from the newest checkpoint in --out.

    python scripts/train_default.py --out runs/default --install
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fractalflow import FractalFlowPipeline, TrainConfig, model_preset
from fractalflow.data import load_fashion_mnist
from fractalflow.hardware import describe_device
from fractalflow.pipeline import default_model_folder
from fractalflow.training import Trainer

TRAIN = TrainConfig(
    steps=2500,
    batch_size=64,
    image_size=32,
    learning_rate=1e-3,
    warmup_steps=100,
    checkpoint_every=250,
    sample_every=500,
    log_every=25,
)
GRID_PROMPTS = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/default", help="run folder (checkpoints, logs, model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=TRAIN.steps, help=f"training steps (default: {TRAIN.steps})")
    parser.add_argument("--install", action="store_true", help="copy the result into the package as the default model")
    args = parser.parse_args()

    train_config = TrainConfig(**{**TRAIN.to_dict(), "steps": args.steps})
    dataset = load_fashion_mnist("train", train_config.image_size)
    model_config = model_preset(
        "small", in_channels=1, class_names=dataset.class_names, sample_size=train_config.image_size
    )
    trainer = Trainer(model_config, train_config, dataset, args.out, device=args.device)
    resumed = trainer.resume()
    started = time.perf_counter()
    summary = trainer.train()
    summary["seconds_this_session"] = time.perf_counter() - started
    summary["resumed"] = resumed
    summary["hardware"] = describe_device(trainer.device)
    summary["parameters"] = sum(p.numel() for p in trainer.model.parameters())
    print(json.dumps(summary, indent=2))
    if not args.install:
        return
    target = default_model_folder()
    trainer.export(target, dtype=torch.float16)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    grid = FractalFlowPipeline.default(device="cpu").generate(GRID_PROMPTS, num_images_per_prompt=4, steps=20, seed=0)
    docs = Path(__file__).resolve().parents[1] / "docs" / "images"
    docs.mkdir(parents=True, exist_ok=True)
    grid.grid(columns=4).resize((4 * 32 * 3, 10 * 32 * 3), resample=0).save(docs / "default-fashion-mnist.png")
    print(f"installed the default model in {target}")


if __name__ == "__main__":
    main()
