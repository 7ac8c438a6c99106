"""Which guidance draws the asked concept best? The shipped model under several sampling settings.

Every variant is one ``GenerationConfig`` over the model's defaults, measured with
``fractalflow eval``'s metrics on the same held-out captions and seeds (64 px, one scale), in
one process, so the rows compare: FD-EffNetL0, precision/recall, alignment top-5, concept
retrieval, and seconds per image (batches of 64, this machine).

    python benchmarks/guidance.py --n 661                      # ~1.5 min per variant on 2 cores
    python benchmarks/guidance.py --variants "guidance=3" "guidance=5,guidance_interval=0.2:1"
    python benchmarks/guidance.py --split train ...            # the same on training captions

A variant is comma-separated ``name=value`` settings; ``a:b`` is a pair. Writes
``benchmarks/results/guidance-<model name>[-<size>][-n<captions>][-train].json`` after every variant (size and
captions named when they are not 64 and 661); settings measured
before with the same model, ``--n``, size and hardware are kept, not redrawn (a row's
``config`` is what ran: its variant was written over the model's defaults of that day), unless
``--redraw`` asks for it (the code behind a setting changed).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from fractalflow import FractalFlowPipeline
from fractalflow.data.emoji import EmojiDataset, load_emoji
from fractalflow.evaluation.alignment import AlignmentEncoder, load_alignment_encoder
from fractalflow.evaluation.concepts import asked_concept_images
from fractalflow.evaluation.evaluate import EvalSettings, eval_rows, evaluate
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device, resolve_device
from fractalflow.model.adaptive import CacheSettings
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DEFAULT_N = 661
CACHE_PREFIX = "cache."
DEFAULT_VARIANTS = ["guidance=1.5", "guidance=3", "guidance=4.5", "guidance=6", "guidance=8"]


def parse_value(text: str) -> int | float | str | tuple | bool | None:
    """``10`` -> 10, ``4.5`` -> 4.5, ``0.2:1`` -> (0.2, 1.0), ``true`` -> True, ``none`` -> None,
    ``heun`` -> "heun"."""
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    if ":" in text:
        return tuple(float(part) for part in text.split(":"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class Measuring:
    """What an eval of ``n`` captions of a split needs: its real images (``held_out``, of the split
    asked for), the images of the emoji concepts they ask for (None: none asked) and the
    alignment encoder."""

    held_out: EmojiDataset
    gallery: EmojiDataset | None
    alignment: AlignmentEncoder

    @classmethod
    def load(cls, data: str | Path, size: int, split: str, n: int) -> Measuring:
        held_out = load_emoji(data, image_size=size, split=split)
        gallery = asked_concept_images(data, held_out, eval_rows(n, len(held_out)), size)
        return cls(held_out, gallery, load_alignment_encoder())

    def evaluate(self, pipeline: FractalFlowPipeline, settings: EvalSettings) -> dict:
        return evaluate(pipeline, self.held_out, settings, self.alignment, gallery=self.gallery, progress=False)


def parse_variant(text: str) -> dict:
    """``guidance=5,guidance_interval=0.2:1`` -> ``{"guidance": 5, "guidance_interval": (0.2, 1.0)}``.
    Fields of :class:`CacheSettings` prefixed ``cache.`` make one adaptive policy, for trying one
    that no ``adaptive.json`` holds: ``cache.depth=0,cache.step_fraction=0.4,cache.guidance_every=2``
    -> ``{"adaptive": CacheSettings(depth=0, step_fraction=0.4, guidance_every=2)}``."""
    values = {name.strip(): parse_value(value) for name, _, value in (item.partition("=") for item in text.split(","))}
    cached = [name for name in values if name.startswith(CACHE_PREFIX)]
    cache = {name.removeprefix(CACHE_PREFIX): values.pop(name) for name in cached}
    return values | ({"adaptive": CacheSettings(**cache)} if cache else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_folder()), help="model folder (default: the shipped one)")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="settings to compare")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"held-out captions (default: {DEFAULT_N})")
    parser.add_argument("--size", type=int, default=64, help="side in pixels (default: 64)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument(
        "--split", choices=("eval", "train"), default="eval", help="captions and images to measure with (default: eval)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--redraw", action="store_true", help="draw the variants again, replacing earlier rows")
    args = parser.parse_args()
    device = resolve_device(args.device)
    pipeline = FractalFlowPipeline.from_pretrained(args.model, device=device)
    defaults = pipeline.generation_config.merged(size=args.size)
    measuring = Measuring.load(args.data, args.size, args.split, args.n)
    suffix = (
        ("" if args.size == 64 else f"-{args.size}")
        + ("" if args.n == DEFAULT_N else f"-n{args.n}")
        + ("" if args.split == "eval" else f"-{args.split}")
    )  # a run with other settings writes its own file, not over another's rows
    path = RESULTS / f"guidance-{Path(args.model).name}{suffix}.json"
    header = {"model": args.model, "n": args.n, "size": args.size, "split": args.split}
    header["hardware"] = describe_device(device)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    same = {k: previous.get(k) for k in header} == header
    rows = previous.get("variants", []) if same else []
    for variant in args.variants:
        config = defaults.merged(**parse_variant(variant))
        described = json.loads(json.dumps(config.describe()))
        if any(row["config"] == described for row in rows) and not args.redraw:
            continue  # measured before (a variant is over the defaults of its day: the config says what ran)
        rows = [row for row in rows if row["config"] != described]
        settings = EvalSettings(num_images=args.n, batch_size=64, generation=config)
        print(f"== {variant}", flush=True)
        report = measuring.evaluate(pipeline, settings)
        report.pop("per_image")  # one value per image: for regression checks, too long to keep here
        rows.append({"variant": variant, "config": config.describe(), "eval": report})
        atomic_write_text(path, json.dumps({**header, "variants": rows}, indent=2) + "\n")

    header_line = f"{'variant':40s} {'FD':>7s} {'prec':>5s} {'rec':>5s} {'top5':>5s} {'concept':>7s} {'s/img':>6s}"
    print(header_line + "\n" + "-" * len(header_line))
    for row in rows:
        m = row["eval"]["metrics"]
        print(
            f"{row['variant']:40s} {m['fd_effnet_l0']:7.1f} {m['precision']:5.3f} {m['recall']:5.3f} "
            f"{m['alignment_top5']:5.3f} {m['concept_retrieval']:7.3f} {row['eval']['seconds_per_image']:6.3f}"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
