"""Train the default text-to-image model on a lent GPU machine from a pack, within a wall-clock budget.

Runs from the repository root with nothing installed but torch, numpy, safetensors,
tokenizers and Pillow (no network, no npm packages, no pip install of fractalflow):

    fractalflow data pack --out pack                                   # here, on the CPU
    python scripts/gpu_train.py --pack pack --minutes 7 --out "$OUT"   # there, on the GPU

Reads the pack (``fractalflow.data.pack``), encodes every caption variant once with the
packed MiniLM into a table on the GPU (``CaptionTable``), keeps the images and draws the noise
on the GPU, measures the step time in a short probe to plan the learning-rate schedule for
the budget, trains with bf16 autocast (and ``torch.compile``
with ``--compile``), and writes to ``--out``: the EMA model in fp16 (``model/``, sharded
below 16 MiB a file) and ``gpu_train.json`` (settings, loss curve, images/s, MFU, how busy
the GPU was, hardware).
With ``--init`` it continues from a model folder (e.g. the shipped default) instead of from
scratch, optionally adding split mixing (``--split-mixing``, at ``--added-layers-lr-scale``).
The shipped default of stop 27 came from (one H100, 5 minutes in all):

    python scripts/gpu_train.py --pack pack --init src/fractalflow/weights/default --resolutions 64 \
        --batch-size 1024 --learning-rate 5e-4 --minutes 5 --total-minutes 5 \
        --split-mixing depthwise-conv --added-layers-lr-scale 10 --out "$OUT/mixb"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from fractalflow.config import CHOICES, DEFAULT_MODEL_SHAPE, FractalConfig, TrainConfig, model_preset  # noqa: E402
from fractalflow.data.pack import read_pack, unpack_text_encoder  # noqa: E402
from fractalflow.model.text import CaptionTable, TextEncoder  # noqa: E402
from fractalflow.training import Trainer  # noqa: E402
from fractalflow.training.trainer import network_to_train, training_flops_per_image  # noqa: E402

# dense bf16 peak of the GPUs we are lent, for MFU (NVIDIA's datasheets, without sparsity)
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
SHARD_BYTES = 15 * 2**20
SAVE_SECONDS = 30  # kept back from --total-minutes to write the model and report


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


class BusySampler:
    """Reads ``torch.cuda.utilization()`` (NVML: the share of time a kernel ran) every
    ``seconds`` in a thread while training runs. A low share means the host sets the pace.
    ``samples`` stays empty without CUDA or NVML."""

    def __init__(self, device: torch.device, seconds: float = 5.0):
        self.device, self.seconds, self.samples = device, seconds, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stop.wait(self.seconds):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # no NVML bindings or no answer: sampling ends, never the run
                return

    def __enter__(self) -> BusySampler:
        if self.device.type == "cuda":
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def report(self) -> dict | None:
        if not self.samples:
            return None
        return {"median": statistics.median(self.samples), "samples": self.samples, "every_seconds": self.seconds}


def train_config(args: argparse.Namespace, steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        image_size=64,
        resolutions=tuple(int(size) for size in args.resolutions.split(",")),
        learning_rate=args.learning_rate,
        warmup_steps=min(200, max(1, steps // 10)),
        checkpoint_every=0,
        sample_every=0,
        log_every=args.log_every,
        mixed_precision="bf16" if args.device == "cuda" else "no",
        init=args.init or "",
        added_layers_lr_scale=args.added_layers_lr_scale,
        shift_augment=args.shift_augment,
        shift_fill=args.shift_fill,
    )


def build_trainer(args, network: FractalConfig, steps: int, dataset, captions: CaptionTable, out: Path) -> Trainer:
    trainer = Trainer(
        network,
        train_config(args, steps),
        dataset,
        out,
        device=args.device,
        progress=False,
        text_encoder=captions,
    )
    if args.compile:
        trainer.model.compile()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", default="pack", help="folder written by 'fractalflow data pack' (default: pack)")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu"), help="output folder (default: $OUT)")
    parser.add_argument("--minutes", type=float, default=7.0, help="training wall-clock budget (default: 7)")
    parser.add_argument(
        "--total-minutes",
        type=float,
        default=None,
        help="limit on the whole run, loading and saving included: the training budget shrinks to fit",
    )
    parser.add_argument("--preset", default="small", help="model size preset (default: small)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per step at 64 px (default: 256)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    parser.add_argument("--init", default=None, help="model folder to continue from (default: from scratch)")
    parser.add_argument(
        "--split-mixing", choices=CHOICES["split_mixing"], default=None, help="add FractalConfig.split_mixing"
    )
    parser.add_argument(
        "--added-layers-lr-scale",
        type=float,
        default=1.0,
        help="learning rate of layers the --init model lacks, as a multiple of --learning-rate (default: 1)",
    )
    parser.add_argument(
        "--resolutions", default="32,64", help="training sizes, comma-separated (default: 32,64; 64 to fine-tune)"
    )
    parser.add_argument(
        "--shift-augment",
        type=int,
        default=0,
        help="move each training image by up to this many pixels, for sampling with grid_jitter (default: 0)",
    )
    parser.add_argument(
        "--shift-fill",
        type=float,
        default=None,
        help="fill the rows a move opens with this value, 1 = white (default: mirror the edge)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--log-every", type=int, default=50, help="steps between loss-curve points (default: 50)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (for tests)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    args = parser.parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True

    dataset = read_pack(Path(args.pack))
    dataset.images = dataset.images.to(device)  # indexing and resizing on the GPU, not the host
    with tempfile.TemporaryDirectory() as folder:
        packed_minilm = unpack_text_encoder(Path(args.pack) / "text", Path(folder))
        encoder = TextEncoder.from_pretrained(packed_minilm, device=device)
    # every caption variant encoded once and kept on the device: a step looks its batch up there
    captions = CaptionTable(encoder, [c for variants in dataset.caption_variants for c in variants], device)
    loaded = time.perf_counter() - started

    network = network_to_train(model_preset(args.preset, **DEFAULT_MODEL_SHAPE), args.init, args.split_mixing)
    probe_steps, warm_steps = 20, 10
    work = Path(tempfile.mkdtemp(prefix="gpu_train-"))  # logs of the trainers; only the results go to --out
    probe = build_trainer(args, network, probe_steps + warm_steps, dataset, captions, work / "probe")
    for _ in range(warm_steps):
        probe.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    probe_started = time.perf_counter()
    for _ in range(probe_steps):
        probe.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_seconds = (time.perf_counter() - probe_started) / probe_steps
    del probe

    budget = args.minutes * 60
    if args.total_minutes:
        budget = min(budget, args.total_minutes * 60 - (time.perf_counter() - started) - SAVE_SECONDS)
    # planned for 90 % of the probe's rate: when the rate dips (a second run on the GPU), the
    # cosine schedule still ends inside the budget rather than being cut off near its peak
    steps = max(1, int(0.9 * budget / step_seconds))
    if args.max_steps:
        steps = min(steps, args.max_steps)
    trainer = build_trainer(args, network, steps, dataset, captions, work / "run")
    with BusySampler(device) as busy:
        summary = trainer.train(max_seconds=budget)
    trainer.export(out / "model", torch.float16, max_shard_bytes=SHARD_BYTES)

    flops = training_flops_per_image(trainer.ema.module, 64)
    peak = peak_tflops(device)
    achieved = summary["images_per_s"] * flops / 1e12
    report = {
        "what": "scripts/gpu_train.py: the default model trained from a pack on a lent GPU",
        "settings": {**vars(args), "planned_steps": steps},
        "model_config": trainer.model_config.to_dict(),
        "train_config": trainer.config.to_dict(),
        "pack": json.loads((Path(args.pack) / "manifest.json").read_text()),
        "train_images": len(dataset),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "probe_seconds_per_step": step_seconds,
        "summary": summary,
        "train_tflops_per_s": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_bf16_tflops": peak,
        "gpu_busy_percent": busy.report(),
        "curve": trainer.history,
        "load_seconds": loaded,
        "total_seconds": time.perf_counter() - started,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    (out / "gpu_train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("summary", "train_tflops_per_s", "mfu", "total_seconds")}, indent=2))


if __name__ == "__main__":
    main()
