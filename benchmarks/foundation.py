"""Foundation numbers for the default config: parameters, forward FLOPs against image
size, CPU training throughput, and time for one image, each beside a baseline measured
in the same run: the same hourglass with global attention at every level.

    python benchmarks/foundation.py        # prints a table, writes benchmarks/results/foundation-<device>.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from fractalflow import Conditioning, FractalFlowPipeline, FractalTransformer
from fractalflow.files import atomic_write_text
from fractalflow.flow import rectified_flow_loss
from fractalflow.hardware import describe_device
from fractalflow.model.flops import forward_flops
from fractalflow.pipeline import default_model_folder

RESULTS = Path(__file__).parent / "results"


def global_attention_twin(model: FractalTransformer) -> FractalTransformer:
    """Same weights and shape, but every level attends globally (window larger than any map)."""
    twin = FractalTransformer(replace(model.config, window=10**6))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def training_images_per_s(model: FractalTransformer, cond: Conditioning, size: int, steps: int) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    batch = len(cond)
    x0 = torch.randn(batch, model.config.in_channels, size, size, generator=generator)

    def step() -> None:
        loss = rectified_flow_loss(lambda x, t, d: model(x, t, cond, d), x0, generator, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    model.eval()
    return batch * steps / (time.perf_counter() - started)


def seconds_per_image(pipeline: FractalFlowPipeline, prompt: str, size: int, steps: int, repeats: int) -> float:
    pipeline.generate(prompt, steps=2, size=size, seed=0)  # warm-up (and the prompt's text features cached)
    times = []
    for i in range(repeats):
        started = time.perf_counter()
        pipeline.generate(prompt, steps=steps, size=size, seed=i)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps per model (default: 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per setting (default: 3)")
    args = parser.parse_args()

    started = time.perf_counter()
    pipeline = FractalFlowPipeline.from_pretrained(default_model_folder(), device="cpu")
    model = pipeline.model
    prompt = model.config.class_names[0] if model.config.is_class_conditional else "red heart"
    pipeline.generate(prompt, steps=20, size=64, seed=0)
    first_image_seconds = time.perf_counter() - started
    twin = global_attention_twin(model)
    sizes = (32, 64, 128, 256)
    flops = {s: forward_flops(model, s) for s in sizes}
    twin_flops = {s: forward_flops(twin, s) for s in sizes}
    report = {
        "hardware": describe_device("cpu"),
        "torch": torch.__version__,
        "baseline": "same FractalTransformer weights with global attention at every level",
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompt": prompt,
        "seconds_first_image_64px_20_steps_including_load": first_image_seconds,
        "forward_gflops": {s: flops[s] / 1e9 for s in sizes},
        "forward_gflops_baseline": {s: twin_flops[s] / 1e9 for s in sizes},
        "flops_per_pixel_vs_32px": {s: (flops[s] / s**2) / (flops[32] / 32**2) for s in sizes},
        "baseline_flops_per_pixel_vs_32px": {s: (twin_flops[s] / s**2) / (twin_flops[32] / 32**2) for s in sizes},
    }
    train_size, batch = 32, 64
    cond = pipeline.encode_prompts([prompt] * batch)
    report["train_images_per_s_32px_batch64"] = training_images_per_s(model, cond, train_size, args.train_steps)
    report["train_images_per_s_32px_batch64_baseline"] = training_images_per_s(twin, cond, train_size, args.train_steps)
    shared_encoder = None if model.config.is_class_conditional else pipeline.text_encoder
    twin_pipeline = FractalFlowPipeline(twin, text_encoder=shared_encoder)
    for size in (32, 64, 128):
        report[f"seconds_per_image_{size}px_20_steps"] = seconds_per_image(pipeline, prompt, size, 20, args.repeats)
        report[f"seconds_per_image_{size}px_20_steps_baseline"] = seconds_per_image(
            twin_pipeline, prompt, size, 20, args.repeats
        )

    print(f"hardware: {report['hardware']}; baseline: {report['baseline']}")
    print(f"parameters: {report['parameters'] / 1e6:.2f} M")
    print(f"first 64 px image from a cold pipeline (load, text encoder, 20 steps): {first_image_seconds:.2f} s")
    print(f"{'size':>6} {'GFLOPs':>9} {'baseline':>9} {'ratio':>6} {'FLOPs/px vs 32':>15} {'baseline':>9}")
    for s in sizes:
        print(
            f"{s:>6} {flops[s] / 1e9:>9.3f} {twin_flops[s] / 1e9:>9.3f} {flops[s] / twin_flops[s]:>6.2f} "
            f"{report['flops_per_pixel_vs_32px'][s]:>15.3f} {report['baseline_flops_per_pixel_vs_32px'][s]:>9.3f}"
        )
    rows = [
        ("train images/s, 32 px, batch 64", "train_images_per_s_32px_batch64"),
        ("s per image, 32 px, 20 steps, CFG", "seconds_per_image_32px_20_steps"),
        ("s per image, 64 px, 20 steps, CFG", "seconds_per_image_64px_20_steps"),
        ("s per image, 128 px, 20 steps, CFG", "seconds_per_image_128px_20_steps"),
    ]
    print(f"\n{'measure':<36} {'ours':>9} {'baseline':>9} {'ratio':>6}")
    for label, key in rows:
        ours, base = report[key], report[key + "_baseline"]
        print(f"{label:<36} {ours:>9.3f} {base:>9.3f} {ours / base:>6.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "foundation-cpu.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
