"""Quality against training wall-clock: every snapshot of a long run, evaluated alike.

A run trained with ``--snapshot-minutes`` (``fractalflow train`` or
``scripts/train_default.py``) holds ``snapshots/<M>min`` model folders, the EMA model once
training had run M minutes (summed over resumed runs). Each is measured with
``fractalflow eval``'s metrics on the same held-out captions (Euler, 20 steps, guidance 3;
or the sampling defaults of ``--sampling-from``'s model folder), so the table shows where
more compute stops paying. The model to beat (by default the shipped default model) is
measured alike on the first line.

    python benchmarks/long_run.py --run runs/default --n 661
    python benchmarks/long_run.py --run runs/default-ft5 --sampling-from src/fractalflow/weights/default

Prints a table and writes ``benchmarks/results/long-run-<run name>.json`` after every
snapshot; snapshots already measured with the same settings are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import load_emoji
from fractalflow.evaluation.alignment import load_alignment_encoder
from fractalflow.evaluation.concepts import asked_concept_images
from fractalflow.evaluation.evaluate import EvalSettings, eval_rows, evaluate
from fractalflow.files import atomic_write_text
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device, resolve_device
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def snapshots(run: Path) -> list[Path]:
    """The run's snapshot folders, in training order."""
    found = [p for p in (run / "snapshots").glob("*min") if (p / "snapshot.json").is_file()]
    return sorted(found, key=lambda p: json.loads((p / "snapshot.json").read_text())["minutes"])


def weights_digest(folder: Path) -> str:
    """Which weights a folder holds (a baseline is re-measured when they change)."""
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


def save(path: Path, settings: dict, baseline: dict, rows: list[dict]) -> None:
    atomic_write_text(
        path, json.dumps({"settings": settings, "baseline": baseline, "snapshots": rows}, indent=2) + "\n"
    )


def print_table(baseline: dict, rows: list[dict]) -> None:
    header = f"{'model':>9s} {'step':>6s} {'FD':>7s} {'FD/base':>7s} "
    header += f"{'prec':>5s} {'rec':>5s} {'top5':>5s} {'concept':>7s}"
    print(header + "\n" + "-" * len(header))
    base_fd = baseline["eval"]["metrics"]["fd_effnet_l0"]
    for label, row in [("baseline", baseline)] + [(f"{r['minutes']} min", r) for r in rows]:
        m = row["eval"]["metrics"]
        print(
            f"{label:>9s} {row.get('step', 0):6d} {m['fd_effnet_l0']:7.1f} {m['fd_effnet_l0'] / base_fd:7.3f} "
            f"{m['precision']:5.3f} {m['recall']:5.3f} {m['alignment_top5']:5.3f} {m['concept_retrieval']:7.3f}"
        )
    real = baseline["eval"]["real_held_out"]
    print(f"real held-out: top5 {real['alignment_top5']:.3f}, concept retrieval {real['concept_retrieval']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/default", help="run folder with snapshots/ (default: runs/default)")
    parser.add_argument("--n", type=int, default=661, help="held-out captions to evaluate (default: 661)")
    parser.add_argument("--size", type=int, default=64, help="side in pixels (default: 64)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument(
        "--baseline", default=str(default_model_folder()), help="model folder to beat (default: the shipped model)"
    )
    parser.add_argument(
        "--sampling-from",
        default=None,
        help="sample every model with this model folder's generation_config.json (default: guidance 3 at every "
        "step, as the earlier tables)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()
    run = Path(args.run)
    found = snapshots(run)
    if not found:
        parser.error(f"{run} has no snapshots/<M>min folders; train with --snapshot-minutes")
    device = resolve_device(args.device)
    sampling = GenerationConfig.for_model(args.sampling_from) if args.sampling_from else GenerationConfig()
    settings = EvalSettings(num_images=args.n, batch_size=64, generation=sampling.merged(size=args.size))
    held_out = load_emoji(args.data, image_size=args.size, split="eval")
    gallery = asked_concept_images(args.data, held_out, eval_rows(args.n, len(held_out)), args.size)
    alignment = load_alignment_encoder()
    path = RESULTS / f"long-run-{run.name}.json"
    header = {"n": args.n, "size": args.size, "held_out_images": len(held_out), "hardware": describe_device(device)}
    if args.sampling_from:  # earlier files, all sampled at guidance 3, have no such entry
        header["generation"] = json.loads(json.dumps(settings.generation.to_dict()))
    previous = json.loads(path.read_text()) if path.is_file() else {}
    same = previous.get("settings") == header
    rows = previous.get("snapshots", []) if same else []
    base_folder = Path(args.baseline)
    baseline = previous.get("baseline") if same else None
    if baseline is None or baseline["digest"] != weights_digest(base_folder):
        print(f"== baseline {base_folder}", flush=True)
        pipeline = FractalFlowPipeline.from_pretrained(base_folder, device=device)
        evaluation = evaluate(pipeline, held_out, settings, alignment, gallery=gallery)
        baseline = {"folder": str(base_folder), "digest": weights_digest(base_folder), "eval": evaluation}
    for folder in found:
        info = json.loads((folder / "snapshot.json").read_text())
        if any(r["minutes"] == info["minutes"] for r in rows):
            continue
        print(f"== {folder.name}: step {info['step']}", flush=True)
        pipeline = FractalFlowPipeline.from_pretrained(folder, device=device)
        rows.append({**info, "eval": evaluate(pipeline, held_out, settings, alignment, gallery=gallery)})
        rows.sort(key=lambda r: r["minutes"])
        save(path, header, baseline, rows)
    save(path, header, baseline, rows)
    print_table(baseline, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
