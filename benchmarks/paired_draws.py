"""How much does a sampling change cost, beyond the noise of one draw? Paired over several draws.

One eval draw of 661 held-out captions moves alignment top-5 by about 0.017 (its standard
error) and FD by several points from one set of seeds to the next, and every variant of
``guidance.py`` is compared with a single draw of its baseline: a lucky baseline makes every
variant look worse. Here the baseline and each variant draw the same captions with the same
seeds in each of ``--draws`` draws (draw k: seeds from ``k * 100003``), and a variant's
change is paired image by image:

- Δ top-5: the mean, over every image of every draw, of (own caption in the top 5 under the
  variant) − (under the baseline), with its standard error (the differences' spread over the
  square root of their count); images whose hit does not change add nothing but count;
- FD × baseline: the ratio in each draw, and their mean and spread over draws.

    python benchmarks/paired_draws.py --baseline early_stop=0.02 \\
        --variants adaptive=auto,early_stop=0.02 adaptive=2,early_stop=0.02 --draws 4   # ~1.5 min per eval

A setting is ``name=value`` pairs as in ``guidance.py``; ``cache.<field>=value`` pairs make one
adaptive policy that no ``adaptive.json`` holds (``cache.depth=0,cache.step_fraction=0.4``). Writes
``benchmarks/results/paired-draws-<model>[-<size>][-train].json`` after every eval, and at the
end its table under ``summaries`` by baseline; evals already in it (same model, captions, size,
split, settings and draw) are kept, not redrawn, so an interrupted run goes on where it
stopped, and a run with another baseline pairs the evals drawn before. An eval's key holds the
step-caching settings its ``adaptive`` value resolved to, so a recalibrated ``adaptive.json``
draws its policies again. A change to the code that changes what a setting draws does not show
in its key: move that setting's evals out first (stop 37 kept those from before the partly
guided step in ``*-whole-step-guidance.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from guidance import Measuring, parse_variant

from fractalflow import FractalFlowPipeline
from fractalflow.evaluation.evaluate import EvalSettings
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device, resolve_device
from fractalflow.pipeline import default_model_folder

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DRAW_SEED_STRIDE = 100003  # draw k's image i has seed k * stride + i: no seed shared between draws


def paired_change(baseline: list[list[int]], variant: list[list[int]]) -> tuple[float, float]:
    """Mean and standard error of the per-image change of top-5 hits (ranks below 5), pairing
    image i of draw k under the variant with the same image under the baseline."""
    changes = [
        float(new < 5) - float(old < 5)
        for base_draw, new_draw in zip(baseline, variant)
        for old, new in zip(base_draw, new_draw)
    ]
    spread = statistics.stdev(changes) if len(changes) > 1 else 0.0
    return statistics.fmean(changes), spread / len(changes) ** 0.5


def summary(rows: dict[str, dict[int, dict]], baseline: str, draws: list[int]) -> dict[str, dict]:
    """Per variant: how many draws it pairs, top-5 and FD in each, the paired Δ top-5 (over all
    draws, and in each draw) and FD ratios against ``baseline``."""
    base = rows[baseline]
    table = {}
    for name, by_draw in rows.items():
        ranks = [by_draw[k]["ranks"] for k in draws]
        change, error = paired_change([base[k]["ranks"] for k in draws], ranks)
        by_draw_change = [paired_change([base[k]["ranks"]], [by_draw[k]["ranks"]])[0] for k in draws]
        ratios = [by_draw[k]["metrics"]["fd_effnet_l0"] / base[k]["metrics"]["fd_effnet_l0"] for k in draws]
        table[name] = {
            "draws": len(draws),
            "top5": [by_draw[k]["metrics"]["alignment_top5"] for k in draws],
            "fd": [by_draw[k]["metrics"]["fd_effnet_l0"] for k in draws],
            "concept_retrieval": [by_draw[k]["metrics"]["concept_retrieval"] for k in draws],
            "top5_change": change,
            "top5_change_standard_error": error,
            "top5_change_by_draw": by_draw_change,
            "fd_ratio": ratios,
            "fd_ratio_mean": statistics.fmean(ratios),
            "fd_ratio_sd": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_folder()), help="model folder (default: the shipped one)")
    parser.add_argument("--baseline", default="early_stop=0.02", help="settings every variant is paired with")
    parser.add_argument("--variants", nargs="+", required=True, help="settings to compare with the baseline")
    parser.add_argument("--draws", type=int, default=4, help="draws of seeds (default: 4)")
    parser.add_argument("--n", type=int, default=661, help="held-out captions per draw (default: 661)")
    parser.add_argument("--size", type=int, default=64, help="side in pixels (default: 64)")
    parser.add_argument("--batch", type=int, default=64, help="captions per generate call (default: 64)")
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji data folder")
    parser.add_argument(
        "--split", choices=("eval", "train"), default="eval", help="captions and images to measure with (default: eval)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    pipeline = FractalFlowPipeline.from_pretrained(args.model, device=device)
    defaults = pipeline.generation_config.merged(size=args.size)
    measuring = Measuring.load(args.data, args.size, args.split, args.n)
    suffix = ("" if args.size == 64 else f"-{args.size}") + ("" if args.split == "eval" else f"-{args.split}")
    path = RESULTS / f"paired-draws-{Path(args.model).name}{suffix}.json"
    header = {"model": args.model, "n": args.n, "size": args.size, "batch": args.batch, "split": args.split}
    previous = json.loads(path.read_text()) if path.is_file() else {}
    same = {k: previous.get(k) for k in header} == header  # else the file's evals pair with nothing here
    evals = previous.get("evals", []) if same else []
    summaries = previous.get("summaries", {}) if same else {}

    def save() -> None:
        report = {**header, "hardware": describe_device(device), "summaries": summaries, "evals": evals}
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")

    names = [args.baseline, *args.variants]
    draws = list(range(args.draws))
    rows: dict[str, dict[int, dict]] = {name: {} for name in names}
    for draw in draws:  # draw by draw, so an interrupted run has whole draws to pair
        for name in names:
            generation = defaults.merged(**parse_variant(name))
            config = json.loads(json.dumps(generation.describe()))  # as the results file holds it
            # "auto" or a speed-up draws what the model's adaptive.json says now: keyed by that too
            config["adaptive_settings"] = pipeline.adaptive_settings(generation.adaptive, args.size)[0].to_dict()
            kept = next((e for e in evals if e["config"] == config and e["draw"] == draw), None)
            if kept is None:
                print(f"== draw {draw}: {name}", flush=True)
                settings = EvalSettings(
                    num_images=args.n, seed=draw * DRAW_SEED_STRIDE, batch_size=args.batch, generation=generation
                )
                report = measuring.evaluate(pipeline, settings)
                kept = {
                    "config": config,
                    "draw": draw,
                    "metrics": report["metrics"],
                    "ranks": report["per_image"]["alignment_rank"],
                    "seconds_per_image": report["seconds_per_image"],
                }
                evals.append(kept)
                save()
            rows[name][draw] = kept
    table = summary(rows, args.baseline, draws)
    compared_before = summaries.get(args.baseline, {}).get("rows", {})
    summaries[args.baseline] = {"rows": {**compared_before, **table}}  # each row says how many draws it pairs
    save()
    line = f"{'settings':44s} {'top-5 per draw':>28s} {'Δ top-5 ± s.e.':>16s} {'FD × base (sd)':>15s}"
    print(line + "\n" + "-" * len(line))
    for name, row in table.items():
        top5 = " ".join(f"{value:.3f}" for value in row["top5"])
        change = f"{row['top5_change']:+.3f} ± {row['top5_change_standard_error']:.3f}"
        print(f"{name:44s} {top5:>28s} {change:>16s} {row['fd_ratio_mean']:8.3f} ({row['fd_ratio_sd']:.3f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
