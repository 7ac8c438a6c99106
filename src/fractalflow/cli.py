"""The ``fractalflow`` command: ``generate``, ``train``, ``eval``, ``bench``, ``calibrate``, ``serve``,
``data`` and ``history``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from pathlib import Path

from fractalflow.config import MODEL_PRESETS, TrainConfig, model_preset, read_json_object
from fractalflow.data.emoji_sources import DEFAULT_CAPS, DEFAULT_MAX_IMAGES

DEFAULT_PACK_MIB = 38


class UsageError(Exception):
    """Bad input from the command line: printed as one clear line, exit status 2."""


def _add_train_config_options(parser: argparse.ArgumentParser) -> None:
    helps = {
        "steps": "optimizer steps in total",
        "batch_size": "images per step",
        "image_size": "training resolution in pixels (a multiple of the model's downsampling)",
        "resolutions": "comma-separated sizes to train on, one drawn per step with the batch scaled to keep "
        "pixels per step constant, e.g. 32,64,128 (default: image-size only)",
        "learning_rate": "peak AdamW learning rate",
        "weight_decay": "AdamW weight decay (matrices only)",
        "warmup_steps": "linear warm-up steps before the cosine decay",
        "grad_clip": "clip the gradient norm to this (0 = off)",
        "ema_decay": "decay of the exponential moving average of the weights that is exported",
        "cond_drop_prob": "share of samples trained without condition (for classifier-free guidance)",
        "timestep_mean": "mean of the logit-normal timestep distribution",
        "timestep_std": "std of the logit-normal timestep distribution",
        "checkpoint_every": "write a resumable checkpoint every N steps",
        "keep_checkpoints": "how many checkpoints to keep",
        "sample_every": "log a sample grid to TensorBoard every N steps (0 = never)",
        "log_every": "log scalars every N steps",
        "seed": "seed of the model initialisation and of all training randomness",
        "mixed_precision": "'auto' (bf16 on CUDA), 'no' or 'bf16'",
        "curriculum": "train in stages SIZES[@T_MEAN][/KIND]:SHARE, comma-separated, e.g. 32:0.4,64:0.4,64+128:0.2 "
        "(replaces --resolutions; see fractalflow.training.curriculum)",
        "curriculum_pacing": "'fixed' (each stage its share) or 'plateau' (move on when the loss stops falling)",
        "snapshot_minutes": "comma-separated training minutes (summed over resumes) at which to export the EMA "
        "model to OUT/snapshots/<M>min, e.g. 30,60,120",
        "init": "start from this model folder ('default': the shipped model) and continue training it; the network "
        "comes from the folder",
        "lora_rank": "train only LoRA adapters of this rank on the attention and MLP linears and export them as an "
        "adapter folder (load with --adapter); 0 trains every weight",
        "added_layers_lr_scale": "learning rate of layers the --init model lacks (zero-initialised, e.g. split "
        "mixing), as a multiple of --learning-rate",
        "shift_augment": "move each training image by up to N pixels, so the network can be sampled with "
        "--grid-jitter (0 = off)",
        "shift_fill": "fill the rows a move opens with this value in [-1, 1], 1 = white (unset: mirror the edge)",
    }
    for field in dataclasses.fields(TrainConfig):
        if field.name not in helps:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, tuple):
            kind = _size_list
        else:  # a setting unset by default (None) takes a number
            kind = float if field.default is None else type(field.default)
        shown = "unset" if field.default is None else field.default
        parser.add_argument(flag, type=kind, default=field.default, help=f"{helps[field.name]} (default: {shown})")


def _scale_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of scales, e.g. 0.25,0.5,1") from None


def _size_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 32,64,128"
        ) from None


def _adaptive(text: str) -> str | float:
    if text in ("off", "auto"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give off, auto or a speed-up such as 2") from None


def _interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give two flow times low:high, e.g. 0.3:1") from None
    return low, high


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _resolution(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    """One option per GenerationConfig field, with its help and limits; left out, the model's
    default (its generation_config.json, else GenerationConfig's)."""
    from fractalflow.generation import GenerationConfig, range_text

    parse = {
        "scales": _scale_list,
        "guidance_interval": _interval,
        "adaptive": _adaptive,
        "resolution": _resolution,
        "sampler": str,
        "postprocess": _name_list,
    }
    for field in dataclasses.fields(GenerationConfig):
        kind = parse.get(field.name) or (int if str(field.type).startswith("int") else float)
        limits = field.metadata.keys() & {"ge", "gt", "le"}
        shown = "unset" if field.default is None else field.default
        rule = f", {range_text(field.metadata)}" if limits else ""
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{field.metadata['help']}{rule} (default: the model's; {shown} unless it says otherwise)",
        )


def _generation_settings(args: argparse.Namespace) -> dict:
    """The GenerationConfig fields given on the command line."""
    from fractalflow.generation import GenerationConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationConfig)}
    return {name: value for name, value in given.items() if value is not None}


def _add_history_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history",
        default=None,
        help="SQLite run history to record this run in (default: $FRACTALFLOW_HISTORY, else history.sqlite "
        "in the cache folder)",
    )
    parser.add_argument("--no-history", action="store_true", help="do not record this run")


def _add_history_command(commands) -> None:
    history = commands.add_parser(
        "history",
        help="list, compare and check the recorded bench, eval and train runs",
        description="Every bench, eval and train run is recorded (commit, model hash, hardware, settings, "
        "metrics, repeated samples). 'list' shows the newest; 'compare A B' two runs side by side; 'check' tests a "
        "run (default: the newest) against earlier runs of the same kind, hardware and settings and exits 1 on a "
        "regression (Mann-Whitney U on repeated timings, a bootstrap test on FD).",
    )
    history.add_argument(
        "action", nargs="?", default="list", choices=("list", "compare", "check"), help="what to do (default: list)"
    )
    history.add_argument("runs", nargs="*", type=int, help="run ids: two for compare, at most one for check")
    history.add_argument("--kind", default=None, choices=("bench", "eval", "train"), help="only runs of this kind")
    history.add_argument("--last", type=int, default=20, help="runs to list (default: 20)")
    history.add_argument("--path", default=None, help="history file (default: $FRACTALFLOW_HISTORY or the cache's)")
    history.add_argument("--alpha", type=float, default=0.01, help="significance level of the check (default: 0.01)")
    history.add_argument(
        "--min-change",
        type=float,
        default=0.05,
        help="smallest relative change (in the bad direction) that counts as a regression (default: 0.05)",
    )
    history.add_argument(
        "--min-paired-change",
        type=float,
        default=0.02,
        help="the same for per-image eval values, paired by seed, which carry no machine noise (default: 0.02)",
    )
    history.add_argument(
        "--max-baseline-drift",
        type=float,
        default=0.10,
        help="a timing whose baseline runs differ by more than this (relative) is not judged (default: 0.1)",
    )
    history.add_argument(
        "--baseline-runs", type=int, default=5, help="earlier comparable runs to check against (default: 5)"
    )


def _add_generate_command(commands) -> None:
    generate = commands.add_parser(
        "generate",
        help="generate an image from a prompt",
        description="Generate an image from a prompt (several prompts make a grid).",
    )
    generate.add_argument("prompt", nargs="+", help="what to draw; for a class-conditional model, a class name")
    generate.add_argument("-o", "--output", default="out.png", help="PNG file to write (default: out.png)")
    generate.add_argument("--model", default=None, help="model folder or hub id (default: the shipped model)")
    generate.add_argument(
        "--adapter", default=None, help="a LoRA adapter folder (fractalflow train --lora-rank) to apply"
    )
    generate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    generate.add_argument(
        "--num-images", type=int, default=1, help="images per prompt, shown side by side (default: 1)"
    )
    _add_generation_options(generate)
    generate.add_argument(
        "--upscale",
        type=int,
        default=1,
        help="enlarge the saved PNG by this integer factor, 1 to 16, with nearest-neighbour pixels (default: 1)",
    )


def _add_train_command(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a model on a captioned dataset",
        description="Train a FractalTransformer with rectified flow; resumes from the "
        "newest checkpoint in --out unless --no-resume.",
    )
    train.add_argument("--data", required=True, help="'fashion-mnist', 'digits', or an imagefolder with metadata.jsonl")
    train.add_argument(
        "--out", required=True, help="run folder: checkpoints/, logs/ (TensorBoard) and the final model/"
    )
    train.add_argument("--preset", default="small", choices=sorted(MODEL_PRESETS), help="model size (default: small)")
    train.add_argument(
        "--model-config", default=None, help="JSON file of FractalConfig fields, applied over the preset"
    )
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    train.add_argument("--no-resume", action="store_true", help="start afresh even if checkpoints exist")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_history_options(train)
    _add_train_config_options(train)


def _add_eval_command(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="measure a model on the held-out split",
        description="Generate for the held-out captions with fixed seeds and report FD-EffNetL0, k-NN "
        "precision/recall, and prompt alignment with hallucination rate (text models) or classifier "
        "accuracy (Fashion-MNIST models). Writes JSON with the model hash, settings, hardware and time.",
    )
    evaluate.add_argument("--model", default=None, help="model folder or hub id (default: the shipped model)")
    evaluate.add_argument(
        "--adapter", default=None, help="a LoRA adapter folder (fractalflow train --lora-rank) to apply"
    )
    evaluate.add_argument(
        "--data",
        default=None,
        help="held-out set: a prepared emoji folder or 'fashion-mnist' (default: data/emoji for text models, "
        "fashion-mnist for a Fashion-MNIST class model)",
    )
    evaluate.add_argument(
        "--n", "--num-images", dest="num_images", type=int, default=2000, help="images to generate (default: 2000)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: 0)")
    evaluate.add_argument("--batch-size", type=int, default=32, help="images generated at once (default: 32)")
    _add_generation_options(evaluate)
    evaluate.add_argument("--alignment-model", default=None, help="alignment encoder folder (default: the shipped one)")
    _add_history_options(evaluate)
    evaluate.add_argument(
        "--out", default=None, help="JSON file to write (default: benchmarks/results/eval-<data>-<model hash>.json)"
    )


def _add_bench_command(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure inference profiles against the plain pipeline",
        description="For each inference profile and resolution, in a fresh process each: seconds to the first "
        "preview and to the image, images/s at batch 1 and the best batch, peak RSS, and FD-EffNetL0 of --n "
        "held-out captions; the plain fp32 single-scale pipeline is measured in the same run as the baseline.",
    )
    bench.add_argument("--model", default="", help="model folder or hub id (default: the shipped model)")
    bench.add_argument(
        "--profiles", default="", help="comma-separated profiles (default: gpu with CUDA, else cpu,edge)"
    )
    bench.add_argument(
        "--resolutions",
        default="preview,standard",
        help="comma-separated named resolutions (default: preview,standard)",
    )
    bench.add_argument("--n", type=int, default=200, help="held-out images for FD per setting; 0 skips (default: 200)")
    bench.add_argument(
        "--early-stop", type=float, default=0.0, help="early-stop threshold for the profiles (default: 0)"
    )
    bench.add_argument("--data", default="data/emoji", help="prepared emoji folder for FD (default: data/emoji)")
    bench.add_argument(
        "--repeats", type=int, default=3, help="images timed one at a time per case, after a warm-up (default: 3)"
    )
    bench.add_argument(
        "--reference",
        default="",
        help="a model folder to time alternately with --model, image by image in the same process: the pairs "
        "compare the two on a machine whose speed drifts, and 'history check' judges the run by them",
    )
    _add_history_options(bench)
    bench.add_argument(
        "--out", default=None, help="JSON file to write (default: benchmarks/results/bench-<cpu|cuda>.json)"
    )


def _add_calibrate_command(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="choose step-caching settings for target speed-ups (adaptive.json)",
        description="Draw training captions (never the held-out split) with full compute and with each candidate "
        "step-caching setting; for each target speed-up (counted in seconds measured here, or FLOPs) keep the "
        "setting whose images stay closest to full compute (EfficientNet-Lite0 features), and write them as "
        "adaptive.json beside the model, where generate --adaptive finds them.",
    )
    calibrate.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    calibrate.add_argument("--data", default="data/emoji", help="prepared emoji folder (default: data/emoji)")
    calibrate.add_argument("--captions", type=int, default=64, help="training captions to draw (default: 64)")
    calibrate.add_argument(
        "--targets", type=_scale_list, default=(1.5, 2.0, 3.0), help="speed-ups to find (default: 1.5,2,3)"
    )
    calibrate.add_argument(
        "--auto", type=_adaptive, default=1.5, help="the target adaptive=auto uses, or off (default: 1.5)"
    )
    calibrate.add_argument(
        "--max-error",
        type=float,
        default=0.6,
        help="largest feature error (distance to full compute over the distance between two images) a policy may "
        "have; a target reached only past it gets none (default: 0.6)",
    )
    calibrate.add_argument(
        "--margin",
        type=float,
        default=1.05,
        help="candidates counted at target / margin or faster are timed against full compute, the least error first "
        "(with --timing-pairs 0: a candidate reaches a target when counted at target x margin) (default: 1.05)",
    )
    calibrate.add_argument(
        "--timing-pairs",
        type=int,
        default=10,
        help="pairs of draws that time a candidate against full compute; the first, by least error, that runs "
        "at least the target's speed-up reaches it (default: 10; 0: the counted speed-up alone decides)",
    )
    calibrate.add_argument(
        "--cost",
        choices=("seconds", "flops"),
        default="seconds",
        help="what speed-ups count: seconds of a forward pass's parts measured here, or FLOPs (default: seconds)",
    )
    calibrate.add_argument(
        "--cost-batch",
        type=int,
        default=1,
        help="images per batch the seconds are measured at (default: 1, one image at a time)",
    )
    calibrate.add_argument(
        "--sizes",
        type=_size_list,
        default=None,
        help="larger image sides to calibrate policies for apart, coarse to fine "
        "(default: twice the model's size; '': none)",
    )
    calibrate.add_argument(
        "--refine-steps",
        type=_size_list,
        default=(1, 2),
        help="steps of each scale after the first to try every candidate with at the larger sizes (default: 1,2)",
    )
    calibrate.add_argument(
        "--early-stop",
        type=float,
        default=0.02,
        help="early stop of every draw, full compute's too (default: 0.02, as the cpu benchmarks sample; 0: off)",
    )
    calibrate.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    calibrate.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    calibrate.add_argument(
        "--out", default=None, help="folder to write adaptive.json into (default: the model's folder)"
    )


def _add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the HTTP service (API, event stream, web UI)",
        description="Serve the model over HTTP: POST /v1/generate, server-sent events at /v1/jobs/{id}/events, "
        "OpenAPI at /docs, Prometheus at /metrics, the web UI at /. Settings come from --config (a ServerConfig "
        "JSON file); the flags below override it.",
    )
    serve.add_argument(
        "--config",
        default=None,
        help="ServerConfig JSON file (default: built-in defaults); $FRACTALFLOW_API_KEY, if set, is its api_key",
    )
    serve.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default: 8000)")
    serve.add_argument("--model", default=None, help="model folder or hub id (default: the shipped model)")
    serve.add_argument("--adapter", default=None, help="LoRA adapter folder to apply (train --lora-rank)")
    serve.add_argument("--profile", default=None, help="inference profile: auto, gpu, cpu, edge (default: auto)")
    serve.add_argument(
        "--browser-model",
        default=None,
        help="ONNX export folder (fractalflow export) the web UI may run on the user's device",
    )


def _add_data_command(commands) -> None:
    data = commands.add_parser("data", help="prepare datasets", description="Prepare datasets from packaged sources.")
    data_commands = data.add_subparsers(dest="data_command", required=True, help="which data step")
    _add_prepare_command(data_commands)
    _add_pack_command(data_commands)


def _add_prepare_command(data_commands) -> None:
    prepare = data_commands.add_parser(
        "prepare",
        help="build the emoji and icon set",
        description="Rasterise 14 emoji styles and 4 icon sets from their npm packages onto white, at each size, "
        "into a packed cache (images-<size>.npy, records.jsonl, sources.json, CREDITS.md) with the train/eval split. "
        "Every emoji is captioned with the CLDR name of its code points.",
    )
    prepare.add_argument("--out", default="data/emoji", help="folder to write (default: data/emoji)")
    prepare.add_argument(
        "--sources",
        default="data/node_modules",
        help="node_modules holding the npm packages (default: data/node_modules)",
    )
    prepare.add_argument("--sizes", type=_size_list, default=(64, 128), help="sizes in pixels (default: 64,128)")
    prepare.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="rasterising processes (default: one per CPU core)"
    )
    prepare.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help=f"images in all; the largest sources are cut first (default: {DEFAULT_MAX_IMAGES})",
    )
    prepare.add_argument(
        "--cap",
        action="append",
        default=None,
        metavar="SOURCE=N",
        help="at most N images of SOURCE, repeatable; replaces the default caps "
        f"({', '.join(f'{k}={v}' for k, v in DEFAULT_CAPS.items())})",
    )


def _add_pack_command(data_commands) -> None:
    pack = data_commands.add_parser(
        "pack",
        help="pack the training split and the text encoder for a GPU machine with no network",
        description="Write the prepared set's training split (lossless WebP at one size) and all-MiniLM-L6-v2 "
        "(int8, cut to the captions' tokens) into one folder within a byte budget, for scripts/gpu_train.",
    )
    pack.add_argument("--data", default="data/emoji", help="prepared emoji folder (default: data/emoji)")
    pack.add_argument("--out", default="pack", help="folder to write (default: pack)")
    pack.add_argument("--size", type=int, default=64, help="image size in pixels (default: 64)")
    pack.add_argument(
        "--max-mib", type=float, default=DEFAULT_PACK_MIB, help=f"size limit in MiB (default: {DEFAULT_PACK_MIB})"
    )


def _add_health_command(commands) -> None:
    health = commands.add_parser(
        "health",
        help="report on training health and the run history",
        description="Write one HTML page: a training run's loss and learning-rate curves and its health events "
        "(skipped steps, rollbacks), the newest recorded runs and the regression check of the newest of each kind.",
    )
    health.add_argument("action", choices=("report",), help="what to do")
    health.add_argument("--run", default=None, help="training run folder (the --out of train) to include")
    health.add_argument("--path", default=None, help="run history file (default: $FRACTALFLOW_HISTORY or the cache's)")
    health.add_argument("-o", "--out", default="health.html", help="HTML file to write (default: health.html)")


def _add_tune_command(commands) -> None:
    tune = commands.add_parser(
        "tune",
        help="search sampling settings for speed and quality (Optuna)",
        description="Multi-objective search (seconds per image, FD-EffNetL0) over steps, guidance and where it "
        "stops, sampler, early stop and step caching, on training captions only; the first trial is the model's "
        "defaults. Writes every trial, the Pareto front and the chosen config (the fastest within --fd-tolerance "
        "of the defaults' FD) as JSON and the front as SVG; --write stores the chosen config as the model's "
        "generation_config.json.",
    )
    tune.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    tune.add_argument("--data", default="data/emoji", help="prepared emoji folder (default: data/emoji)")
    tune.add_argument("--trials", type=int, default=30, help="configs to try (default: 30)")
    tune.add_argument("--captions", type=int, default=200, help="training captions per trial (default: 200)")
    tune.add_argument(
        "--fd-tolerance", type=float, default=0.02, help="FD the chosen config may lose, relative (default: 0.02)"
    )
    tune.add_argument("--out", default="benchmarks/results/tune.json", help="JSON to write; the SVG goes beside it")
    tune.add_argument("--write", action="store_true", help="store the chosen config in the model folder")


def _add_plugins_command(commands) -> None:
    plugins = commands.add_parser(
        "plugins",
        help="list the installed plugins",
        description="List every sampler, guidance, prompt, postprocess, event_sink and loss plugin: the built-ins "
        "and those installed packages declare in the 'fractalflow.plugins' entry-point group, with their version "
        "and distribution, and any entry point that failed to load.",
    )
    plugins.add_argument("action", choices=("list",), help="what to do")


def _add_models_command(commands) -> None:
    models = commands.add_parser(
        "models",
        help="register model versions and move aliases (production, canary)",
        description="A local model registry: 'register FOLDER --name N' copies a model folder in as N's next "
        "version (with its sha256, parent, data, commit and eval metrics); 'list' shows versions and aliases; "
        "'alias A REF' and 'promote REF' point an alias at a version (name:N, name for its newest, or an alias); "
        "'rollback' moves an alias back. A server serving an alias follows it without a restart.",
    )
    models.add_argument("action", choices=("register", "list", "alias", "promote", "rollback"), help="what to do")
    models.add_argument("args", nargs="*", help="register: FOLDER; alias: ALIAS REF; promote: REF")
    models.add_argument("--name", default=None, help="register: the model's name")
    models.add_argument("--parent", default="", help="register: the version it was trained from (name:N)")
    models.add_argument("--data", default="", help="register: the data it was trained on")
    models.add_argument("--eval", default=None, help="register: an eval JSON whose metrics to keep")
    models.add_argument("--alias", default="production", help="promote / rollback: the alias (default: production)")
    models.add_argument(
        "--registry", default=None, help="registry folder (default: $FRACTALFLOW_REGISTRY or the cache's registry)"
    )


def _add_export_command(commands) -> None:
    export = commands.add_parser(
        "export",
        help="export the model to ONNX (onnxruntime, onnxruntime-web)",
        description="Write the transformer (at one image size, batch and prompt length dynamic) and the text "
        "encoder as ONNX graphs with the tokenizer and the model's settings, and check each against torch on "
        "random inputs (the largest difference is printed and kept in onnx_export.json). Needs the extra "
        "fractalflow[onnx].",
    )
    export.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    export.add_argument("--model", default=None, help="model folder or hub id (default: the shipped model)")
    export.add_argument("--out", required=True, help="folder to write (replaced whole)")
    export.add_argument("--size", type=int, default=0, help="image side the graph takes (default: the trained size)")


SUBCOMMANDS = (
    _add_generate_command,
    _add_train_command,
    _add_eval_command,
    _add_bench_command,
    _add_calibrate_command,
    _add_tune_command,
    _add_history_command,
    _add_health_command,
    _add_plugins_command,
    _add_models_command,
    _add_serve_command,
    _add_export_command,
    _add_data_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fractalflow", description="Small, fast pixel-space image generation.")
    commands = parser.add_subparsers(dest="command", required=True, help="what to do")
    for add in SUBCOMMANDS:
        add(commands)
    return parser


def _caps(items: list[str] | None) -> dict[str, int] | None:
    if items is None:
        return None
    caps = {}
    for item in items:
        name, _, count = item.partition("=")
        if not count.isdigit():
            raise UsageError(f"--cap {item!r}: expected SOURCE=N with N a whole number, e.g. material=2000")
        caps[name.strip()] = int(count)
    return caps


def run_data(args: argparse.Namespace) -> None:
    if args.data_command == "pack":
        return run_pack(args)
    from fractalflow.data.emoji import prepare

    if not args.sizes or args.workers < 1 or args.max_images < 1:
        raise UsageError("--sizes needs at least one size, and --workers and --max-images must be >= 1")
    try:
        summary = prepare(
            Path(args.sources), Path(args.out), tuple(args.sizes), args.workers, args.max_images, _caps(args.cap)
        )
    except ValueError as error:
        raise UsageError(str(error)) from error
    for source, message in summary["missing"].items():
        print(f"skipped {source}: {message}")
    print(f"{'source':<22} {'found':>6} {'train':>7} {'eval':>6} {'weight':>7} {'concepts':>9}")
    for source, counts in summary["counts"].items():
        found, weight = summary["available"][source], summary["weights"].get(source, 0.0)
        row = f"{source:<22} {found:>6} {counts['train']:>7} {counts['eval']:>6} {weight:>7.3f}"
        print(f"{row} {counts['concepts']:>9}")
    total = {split: sum(c[split] for c in summary["counts"].values()) for split in ("train", "eval")}
    print(f"{'total':<22} {sum(summary['available'].values()):>6} {total['train']:>7} {total['eval']:>6}")
    print(
        f"held-out concepts: {summary['held_out_concepts']}, of which "
        f"{summary['held_out_concepts_in_training']} appear in training in another style"
    )
    print(
        f"wrote {args.out} at sizes {summary['sizes']} in {summary['seconds']:.0f} s (credits: {args.out}/CREDITS.md)"
    )


def require_prepared(data: str | Path) -> None:
    if not Path(data, "records.jsonl").is_file():
        raise UsageError(f"{data} holds no prepared emoji set; run 'make data' or 'fractalflow data prepare'")


def _text_model_and_data(args: argparse.Namespace, command: str):
    """(folder, pipeline) of ``--model`` (default: the shipped one) for a command that draws
    training captions of the prepared ``--data``: refuses a class model or missing data."""
    from fractalflow.hub import resolve_model_folder
    from fractalflow.pipeline import FractalFlowPipeline, default_model_folder

    require_prepared(args.data)
    folder = resolve_model_folder(args.model) if args.model else default_model_folder()
    pipeline = FractalFlowPipeline.from_pretrained(folder, device="cpu")
    if pipeline.config.is_class_conditional:
        raise UsageError(f"{command} needs a text-conditional model (it draws training captions)")
    return folder, pipeline


def _load_pipeline(model: str | None, adapter: str | None = None):
    from fractalflow.pipeline import FractalFlowPipeline

    pipeline = FractalFlowPipeline.from_pretrained(model) if model else FractalFlowPipeline.default()
    if adapter:
        pipeline.load_adapter(adapter)
    return pipeline


def run_generate(args: argparse.Namespace) -> None:
    from fractalflow.pipeline import check_png_target, save_png

    if args.num_images < 1:
        raise UsageError(f"--num-images={args.num_images}: must be >= 1")
    check_png_target(Path(args.output), args.upscale)
    pipeline = _load_pipeline(args.model, args.adapter)
    result = pipeline.generate(
        args.prompt, num_images_per_prompt=args.num_images, seed=args.seed, progress=True, **_generation_settings(args)
    )
    path = save_png(result.grid(columns=args.num_images), Path(args.output), result.metadata, upscale=args.upscale)
    print(f"wrote {path} ({result.metadata['seconds']:.2f} s)")


def run_train(args: argparse.Namespace) -> None:
    from fractalflow.data import load_dataset
    from fractalflow.hardware import describe_device, resolve_device
    from fractalflow.training import Trainer

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{name: getattr(args, name) for name in train_fields})
    device = resolve_device(args.device)
    overrides = read_json_object(args.model_config) if args.model_config else {}
    dataset = load_dataset(args.data, train_config.image_size)
    model_config = model_preset(
        args.preset,
        **{
            "in_channels": dataset.channels,
            "class_names": dataset.class_names,
            "sample_size": train_config.image_size,
            **overrides,
        },
    )
    if train_config.init:  # the network is the one being continued
        from fractalflow.config import FractalConfig
        from fractalflow.hub import resolve_model_folder
        from fractalflow.pipeline import default_model_folder

        init = default_model_folder() if train_config.init == "default" else resolve_model_folder(train_config.init)
        model_config = dataclasses.replace(FractalConfig.load_json(init / "config.json"), trained_sizes=())
        if model_config.in_channels != dataset.channels:
            channels = f"the model has {model_config.in_channels} channels, the data {dataset.channels}"
            raise UsageError(f"--init {train_config.init}: {channels}")
    text_encoder = None
    if not model_config.is_class_conditional:
        from fractalflow.model.text import TextEncoder

        text_encoder = TextEncoder.from_pretrained(model_config.text_encoder, device=device)
    trainer = Trainer(
        model_config,
        train_config,
        dataset,
        args.out,
        device=device,
        progress=not args.no_progress,
        text_encoder=text_encoder,
    )
    try:  # before hours of training, not after
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot write the run folder {args.out!r}: {error.strerror}") from None
    if not args.no_resume and trainer.resume():
        print(f"resumed from step {trainer.step}")
    summary = trainer.train()
    print(json.dumps(summary, indent=2))
    if trainer.step == train_config.steps:
        print(f"model written to {Path(args.out) / 'model'}")
    _record(
        args,
        kind="train",
        name=str(args.out),
        settings={"train": train_config.to_dict(), "model": model_config.to_dict(), "data": args.data},
        metrics=summary,
        samples={"loss": [entry["loss"] for entry in trainer.history[-20:]]},
        hardware=describe_device(device),
    )


def run_eval(args: argparse.Namespace) -> None:
    from fractalflow.data import load_dataset
    from fractalflow.data.sources import FASHION_MNIST_CLASSES, load_fashion_mnist
    from fractalflow.evaluation.alignment import load_alignment_encoder
    from fractalflow.evaluation.classifier import cached_classifier
    from fractalflow.evaluation.concepts import asked_concept_images
    from fractalflow.evaluation.evaluate import EvalSettings, eval_rows, evaluate
    from fractalflow.files import atomic_write_text
    from fractalflow.monitoring.selfopt import eval_samples

    pipeline = _load_pipeline(args.model, args.adapter)
    settings = EvalSettings(
        num_images=args.num_images,
        seed=args.seed,
        batch_size=args.batch_size,
        generation=pipeline.generation_config.merged(**_generation_settings(args)),
    )
    config = pipeline.config
    size = settings.output_size(config.sample_size, config.downsampling)
    fashion = tuple(config.class_names) == FASHION_MNIST_CLASSES
    data = args.data or ("fashion-mnist" if fashion else "data/emoji")
    alignment = classifier = gallery = None
    if data == "fashion-mnist":
        if not fashion:
            raise UsageError("--data fashion-mnist needs a model trained on the Fashion-MNIST classes")
        held_out = load_fashion_mnist("test", size)
        classifier = cached_classifier("fashion-mnist", load_fashion_mnist("train", size))
    elif config.is_class_conditional:
        raise UsageError(f"no held-out set for a class model with classes {list(config.class_names)}")
    else:
        require_prepared(data)
        held_out = load_dataset(data, size, split="eval")
        alignment = load_alignment_encoder(args.alignment_model)
        gallery = asked_concept_images(data, held_out, eval_rows(settings.num_images, len(held_out)), size)
    report = evaluate(pipeline, held_out, settings, alignment=alignment, classifier=classifier, gallery=gallery)
    report["data"] = data
    print(f"{'metric':<22} {'generated':>10} {'real held-out':>14}")
    for name, value in report["metrics"].items():
        ceiling = report["real_held_out"].get(name)
        print(f"{name:<22} {value:>10.4f} {'' if ceiling is None else f'{ceiling:.4f}':>14}")
    print(f"{'seconds per image':<22} {report['seconds_per_image']:>10.3f}   ({report['hardware']})")
    name = "fashion-mnist" if data == "fashion-mnist" else Path(data).name
    out = Path(args.out or f"benchmarks/results/eval-{name}-{report['model_sha256'][:10]}.json")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    samples = eval_samples(report)
    _record(
        args,
        kind="eval",
        name=report["model"],
        settings={"eval": report["settings"], "data": data},
        metrics=report["metrics"],
        samples=samples,
        model=report["model_sha256"],
        hardware=report["hardware"],
    )
    print(f"wrote {out}")


def run_pack(args: argparse.Namespace) -> None:
    from fractalflow.data.pack import write_pack

    require_prepared(args.data)
    if args.size < 8 or args.max_mib <= 0:
        raise UsageError(f"--size {args.size} must be >= 8 and --max-mib {args.max_mib} > 0")
    try:
        summary = write_pack(Path(args.data), Path(args.out), args.size, int(args.max_mib * 2**20))
    except ValueError as error:
        raise UsageError(str(error)) from error
    print(f"{'source':<22} {'kept':>6} {'of':>6}")
    for source, count in summary["kept_per_source"].items():
        print(f"{source:<22} {count['kept']:>6} {count['of']:>6}")
    print(
        f"wrote {args.out}: {summary['images']} images at {summary['size']} px ({summary['kept_share']:.0%} of the "
        f"training split), text encoder {summary['text']['bytes'] / 2**20:.1f} MiB with "
        f"{summary['text']['tokens_kept']} tokens, {summary['bytes'] / 2**20:.1f} MiB in all, "
        f"{summary['seconds']:.0f} s"
    )


def run_bench(args: argparse.Namespace) -> None:
    import torch

    from fractalflow.files import atomic_write_text
    from fractalflow.flow.refine import NAMED_RESOLUTIONS
    from fractalflow.hardware import describe_device
    from fractalflow.inference.bench import default_profiles, format_table, run_bench
    from fractalflow.monitoring.selfopt import bench_records

    profiles = [p for p in args.profiles.split(",") if p] or default_profiles()
    resolutions = [r for r in args.resolutions.split(",") if r]
    unknown = sorted(set(resolutions) - set(NAMED_RESOLUTIONS))
    if unknown or not resolutions:
        raise UsageError(f"--resolutions {args.resolutions!r}: choose from {list(NAMED_RESOLUTIONS)}")
    if args.n > 0 and not Path(args.data, "records.jsonl").is_file():
        raise UsageError(f"{args.data} holds no prepared emoji set for FD; run 'make data' or pass --n 0")
    if args.reference and not Path(args.reference).is_dir():
        raise UsageError(f"--reference {args.reference!r}: no such model folder")
    report = run_bench(
        profiles, resolutions, args.model, args.n, args.data, args.early_stop, args.repeats, args.reference
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report.update(hardware=describe_device(device), torch=torch.__version__)
    print(format_table(report["rows"]))
    out = Path(args.out or f"benchmarks/results/bench-{device}.json")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    for record in bench_records(report):
        _record(args, **record)


def run_calibrate(args: argparse.Namespace) -> None:
    from fractalflow.inference.calibrate import CalibrationSettings, calibrate, training_captions, write_policies

    settings = CalibrationSettings(
        captions=args.captions,
        steps=args.steps,
        guidance=args.guidance,
        targets=args.targets,
        auto=None if args.auto == "off" else args.auto,
        max_error=args.max_error,
        margin=args.margin,
        timing_pairs=args.timing_pairs,
        cost=args.cost,
        cost_batch=args.cost_batch,
        sizes=args.sizes,
        refine_steps=args.refine_steps,
        early_stop=args.early_stop,
    )
    folder, pipeline = _text_model_and_data(args, "calibrate")
    result = calibrate(pipeline, training_captions(args.data, settings.captions, settings.seed), settings)
    path = write_policies(Path(args.out or folder), result)
    calibration = result["calibration"]
    parts = [(f"{pipeline.config.sample_size} px", result, calibration["rows"])]
    parts += [(f"{size} px", result["sizes"][size], calibration["sizes"][size]) for size in result.get("sizes", {})]
    print(f"{'size':>6} {'target':>6} {'speed-up':>8} {'timed':>6} {'error':>6}  settings")
    for size, policies, rows in parts:
        by_settings = {json.dumps(row["settings"], sort_keys=True): row for row in rows}
        for policy in policies["policies"]:
            row = by_settings[json.dumps(policy["settings"], sort_keys=True)]
            timed = f"{row['paired_speedup']:.2f}" if "paired_speedup" in row else "-"
            print(
                f"{size:>6} {policy['target']:>6g} {row['speedup']:>8.2f} {timed:>6} {row['error']:>6.3f}  "
                f"{policy['settings']}"
            )
    print(f"wrote {path} (auto: {result['auto']})")


def run_serve(args: argparse.Namespace) -> None:
    from fractalflow.serving import ServerConfig, create_app, serve

    config = ServerConfig.load_json(args.config) if args.config else ServerConfig()
    names = ("host", "port", "model", "adapter", "profile", "browser_model")
    overrides = {name: getattr(args, name) for name in names}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if os.environ.get("FRACTALFLOW_API_KEY"):  # a key in argv would show in ps
        config = dataclasses.replace(config, api_key=os.environ["FRACTALFLOW_API_KEY"])
    print(f"fractalflow serve: http://{config.host}:{config.port}/ (API docs at /docs)", file=sys.stderr)
    serve(create_app(config), config)


def _record(args: argparse.Namespace, **run) -> None:
    """Record a finished run in the history unless --no-history."""
    from fractalflow.monitoring.selfopt import record_run

    if args.no_history:
        return
    recorded = record_run(**run, path=args.history)
    print(f"recorded as run {recorded.id} in {args.history or 'the run history'} (fractalflow history)")


def run_history(args: argparse.Namespace) -> int:
    from fractalflow.monitoring.selfopt import REFERENCE, CheckSettings, RunHistory, check_regression, format_runs

    history = RunHistory(args.path)
    if args.action == "list":
        if args.runs:
            raise UsageError("history list takes no run ids (use --kind and --last)")
        runs = history.runs(args.kind, args.last)
        print(format_runs(runs) if runs else f"no runs recorded in {history.path}")
        return 0
    if args.action == "compare":
        if len(args.runs) != 2:
            raise UsageError("history compare needs two run ids, e.g. 'fractalflow history compare 3 7'")
        first, second = (history.get(run_id) for run_id in args.runs)
        print(format_runs([first, second]))
        names = sorted(set(first.metrics) | set(second.metrics))
        print(f"{'metric':28s} {first.id:>12} {second.id:>12} {'change':>8}")
        for name in names:
            a, b = first.metrics.get(name), second.metrics.get(name)
            change = f"{(b - a) / abs(a):+8.1%}" if a and b is not None else ""
            shown = [f"{v:12.4g}" if v is not None else f"{'':12s}" for v in (a, b)]
            print(f"{name:28s} {shown[0]} {shown[1]} {change}")
        if first.settings != second.settings:
            print("note: the two runs were made with different settings")
        return 0
    if len(args.runs) > 1:
        raise UsageError("history check takes at most one run id (default: the newest run)")
    settings = CheckSettings(
        alpha=args.alpha,
        min_change=args.min_change,
        min_paired_change=args.min_paired_change,
        max_baseline_drift=args.max_baseline_drift,
        baseline_runs=args.baseline_runs,
    )
    newest = history.runs(args.kind, 1)
    if not args.runs and not newest:
        raise UsageError(f"no runs recorded in {history.path}")
    run = history.get(args.runs[0]) if args.runs else newest[0]
    baseline = history.comparable(run, settings.baseline_runs)
    paired = any(name.startswith(REFERENCE) for name in run.samples)
    if not baseline and not paired:
        print(f"run {run.id}: no earlier {run.kind} run with the same hardware and settings to check against")
        return 0
    findings = check_regression(run, baseline, settings)
    against = []
    if baseline:
        against.append("runs " + ", ".join(str(b.id) for b in baseline))
    if paired:
        against.append("its reference")
    print(f"run {run.id} ({run.kind} {run.name}, commit {run.git_commit}) against {' and '.join(against)}:")
    for finding in findings:
        print("  " + finding.describe())
    if not findings:
        print("  no metric with repeated samples in both to test")
    regressed = [f.metric for f in findings if f.regressed]
    unsure = [f.metric for f in findings if f.inconclusive]
    if regressed:
        print(f"regression in {', '.join(regressed)}")
    elif unsure:
        print(f"no regression found; {', '.join(unsure)} cannot be judged: measure again on a steadier machine")
    else:
        print("no regression")
    return 1 if regressed else 0


def run_health(args: argparse.Namespace) -> None:
    from fractalflow.files import atomic_write_text
    from fractalflow.monitoring.report import health_report
    from fractalflow.monitoring.selfopt import RunHistory

    if not args.out.endswith(".html"):
        raise UsageError(f"--out {args.out!r} must end in .html")
    run = Path(args.run) if args.run else None
    atomic_write_text(Path(args.out), health_report(run, RunHistory(args.path)))
    print(f"wrote {args.out}")


def run_tune(args: argparse.Namespace) -> None:
    import torch

    from fractalflow.data.emoji import load_emoji
    from fractalflow.files import atomic_write_text
    from fractalflow.generation import GenerationConfig
    from fractalflow.monitoring.tune import TuneSettings, pareto_svg, tune

    settings = TuneSettings(trials=args.trials, captions=args.captions, fd_tolerance=args.fd_tolerance)
    if not args.out.endswith(".json"):
        raise UsageError(f"--out {args.out!r} must end in .json")
    folder, pipeline = _text_model_and_data(args, "tune")
    size = pipeline.config.sample_size
    train = load_emoji(args.data, image_size=size, split="train")
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(settings.seed))[: settings.captions]
    real = torch.round((train.pixels(rows, size) + 1) * 127.5).clamp(0, 255).byte()
    try:
        result = tune(pipeline, [train.captions[i] for i in rows.tolist()], real, settings)
    except ImportError as error:
        raise UsageError(str(error)) from None
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".svg"), pareto_svg(result))
    defaults, chosen = result["trials"][0], result["chosen"]
    print(f"defaults: {defaults['seconds']:.3f} s per image, FD {defaults['fd']:.1f}")
    print(f"chosen (trial {chosen['trial']}): {chosen['seconds']:.3f} s, FD {chosen['fd']:.1f}: {chosen['config']}")
    print(f"wrote {out} and {out.with_suffix('.svg')}")
    if args.write:
        GenerationConfig.from_dict(chosen["config"]).save(folder)
        print(f"wrote the chosen config to {folder}")


def run_plugins(args: argparse.Namespace) -> None:
    from fractalflow.plugins import registry

    found = registry()
    print(f"{'kind':12s} {'name':16s} {'version':9s} {'from':30s} description")
    for plugin in found.plugins():
        print(f"{plugin.kind:12s} {plugin.name:16s} {plugin.version:9s} {plugin.distribution:30s} {plugin.description}")
    for error in found.load_errors:
        print(f"not loaded: {error}")


def run_models(args: argparse.Namespace) -> None:
    from fractalflow.monitoring.selfopt import git_commit, numeric
    from fractalflow.serving.registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    expected = {"register": 1, "list": 0, "alias": 2, "promote": 1, "rollback": 0}[args.action]
    if len(args.args) != expected:
        raise UsageError(f"models {args.action} takes {expected} argument(s), got {len(args.args)}")
    if args.action == "register":
        if not args.name:
            raise UsageError("models register needs --name")
        metrics = numeric(read_json_object(args.eval).get("metrics", {})) if args.eval else {}
        version = registry.register(args.args[0], args.name, args.parent, args.data, git_commit(), metrics)
        print(f"registered {version.ref} (sha256 {version.sha256[:12]}) in {registry.root}")
    elif args.action == "alias":
        print(f"{args.args[0]} -> {registry.alias(args.args[0], args.args[1]).ref}")
    elif args.action == "promote":
        print(f"{args.alias} -> {registry.alias(args.alias, args.args[0]).ref}")
    elif args.action == "rollback":
        print(f"{args.alias} -> {registry.rollback(args.alias).ref}")
    else:
        aliases = registry.aliases()
        print(f"{'version':24s} {'sha256':12s} {'parent':16s} {'aliases':20s} metrics")
        for version in registry.versions():
            named = ",".join(a for a, ref in aliases.items() if ref == version.ref)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in list(version.metrics.items())[:3])
            print(f"{version.ref:24s} {version.sha256[:12]:12s} {version.parent:16s} {named:20s} {shown}")


def run_export(args: argparse.Namespace) -> None:
    from fractalflow.export import ExportSettings, export_onnx
    from fractalflow.pipeline import FractalFlowPipeline, default_model_folder

    for module in ("onnx", "onnxruntime", "onnxscript"):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"export needs {module}: pip install 'fractalflow[onnx]'")
    if args.size < 0:
        raise UsageError(f"--size {args.size}: give a positive image side, or 0 for the trained size")
    pipeline = FractalFlowPipeline.from_pretrained(args.model or default_model_folder(), device="cpu")
    report = export_onnx(pipeline, args.out, ExportSettings(size=args.size))
    for name, size in report.files.items():
        print(f"{name:24s} {size / 2**20:8.1f} MiB")
    parity = ", ".join(f"{graph} {difference:.1e}" for graph, difference in report.parity.items())
    print(f"wrote {args.out} ({report.size} px, opset {report.opset}); max |onnxruntime - torch|: {parity}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {
            "generate": run_generate,
            "train": run_train,
            "eval": run_eval,
            "bench": run_bench,
            "calibrate": run_calibrate,
            "serve": run_serve,
            "data": run_data,
            "history": run_history,
            "plugins": run_plugins,
            "models": run_models,
            "tune": run_tune,
            "health": run_health,
            "export": run_export,
        }
        return commands[args.command](args) or 0
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"fractalflow {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
