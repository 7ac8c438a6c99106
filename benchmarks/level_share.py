"""How much of a forward pass each inner level of the shipped model takes, in seconds and in
FLOPs, at several batch sizes: what step caching of a level can save. ``fractalflow
calibrate`` counts its speed-ups with the same measurement (``ForwardCost.time``).

    python benchmarks/level_share.py                  # ~1 min on 2 cores

Prints a table and writes ``benchmarks/results/level-share-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fractalflow import FractalFlowPipeline
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference.calibrate import ForwardCost

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2,8,32,64,128", help="forward-pass batch sizes (default: 2,8,32,64,128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per size after a warm-up (default: 5)")
    args = parser.parse_args()
    pipeline = FractalFlowPipeline.default(device="cpu")
    flops = ForwardCost.count(pipeline.model, pipeline.config.sample_size)
    flop_shares = {d: v / flops.forward for d, v in flops.levels.items()}
    rows = [{"rows": None, "forward": flops.forward, "level_shares": flop_shares}]
    for count in (int(part) for part in args.rows.split(",")):
        cost = ForwardCost.time(pipeline, "red heart", count, args.repeats)
        shares = {d: v / cost.forward for d, v in cost.levels.items()}
        rows.append({"rows": count, "forward": cost.forward, "level_shares": shares})
    print(f"{'rows':>6} {'forward':>12} " + " ".join(f"{'level ' + str(d):>8}" for d in flops.levels))
    for row in rows:
        label = "FLOPs" if row["rows"] is None else str(row["rows"])
        forward = f"{row['forward']:.3g}" if row["rows"] is None else f"{row['forward'] * 1000:.1f} ms"
        print(f"{label:>6} {forward:>12} " + " ".join(f"{share:8.0%}" for share in row["level_shares"].values()))
    payload = {"hardware": describe_device("cpu"), "size": pipeline.config.sample_size, "rows": rows}
    path = RESULTS / "level-share-cpu.json"
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
