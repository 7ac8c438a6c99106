"""Faults, as an outside tester would cause them: nothing gives a traceback, a wrong result
with exit 0, or a lost run.

1. ``kill -9`` of ``fractalflow train`` at random moments, N times, each followed by the
   same command (which resumes): the final model must equal, tensor for tensor, the one
   an uninterrupted run writes.
2. Damaged checkpoints (every file flipped, truncated or deleted in turn, the newest or all
   of them): resume falls back to the newest intact checkpoint, or refuses in one line.
3. Damaged model folders: ``fractalflow generate`` refuses in one line and writes no PNG.

    python benchmarks/faults.py --kills 10    # ~20 min on 2 cores

Prints a table and writes ``benchmarks/results/faults-cpu.json``. (SIGTERM under load is
tested in ``tests/test_serving.py``: every followed stream ends with a final event.)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from fractalflow import FractalConfig, TrainConfig
from fractalflow.data import load_dataset
from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.training import Trainer
from fractalflow.training.checkpoint import CheckpointError, list_checkpoints

RESULTS = Path(__file__).parent / "results"
FRACTALFLOW = [sys.executable, "-m", "fractalflow.cli"]
TRAIN = ["train", "--data", "digits", "--preset", "tiny", "--image-size", "16", "--batch-size", "16"]
CHECKPOINT_EVERY = 25
TRAIN += ["--steps", "300", "--checkpoint-every", str(CHECKPOINT_EVERY), "--sample-every", "0", "--no-progress"]
KILL_STEPS = 1200  # the killed run: 10 kills, each 1-4 checkpoints on, all land before its end


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(FRACTALFLOW + args, capture_output=True, text=True, timeout=timeout)


def one_line_refusal(result: subprocess.CompletedProcess) -> bool:
    """Exit 2 with a single ``error:`` line on stderr and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode == 2 and "Traceback" not in result.stderr and len(lines) >= 1 and "error:" in lines[-1]


def same_weights(a: Path, b: Path) -> bool:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return left.keys() == right.keys() and all(left[k].equal(right[k]) for k in left)


def kill_mid_run(process: subprocess.Popen, checkpoints: Path, rng: random.Random) -> dict:
    """Let ``process`` train on for 1-4 more checkpoints, then kill -9 it at a random moment
    of the next checkpoint interval (so the kill lands mid-run however loaded the machine is)."""

    def newest() -> int:
        found = list_checkpoints(checkpoints)
        return _step(found[-1]) if found else 0

    start, ahead = newest(), rng.randint(1, 4) * CHECKPOINT_EVERY
    begun = time.perf_counter()
    while process.poll() is None and newest() < start + ahead:
        time.sleep(0.05)
    per_checkpoint = (time.perf_counter() - begun) / (ahead // CHECKPOINT_EVERY)  # start-up included: generous
    time.sleep(rng.uniform(0, per_checkpoint))
    landed = process.poll() is None
    if landed:
        process.send_signal(signal.SIGKILL)
    process.wait()
    return {"after_s": round(time.perf_counter() - begun, 2), "landed": landed, "newest_checkpoint": newest()}


def kills(work: Path, count: int, rng: random.Random) -> dict:
    """Kill the training process ``count`` times mid-run, resuming each time; the final model
    must equal an uninterrupted run's."""
    train = TRAIN + ["--steps", str(KILL_STEPS)]
    straight = work / "straight-long"
    started = time.perf_counter()
    assert run(train + ["--out", str(straight)], timeout=1800).returncode == 0
    seconds = time.perf_counter() - started
    killed = work / "killed"
    at = []
    for _ in range(count):
        process = subprocess.Popen(FRACTALFLOW + train + ["--out", str(killed)], stdout=subprocess.DEVNULL)
        at.append(kill_mid_run(process, killed / "checkpoints", rng))
        print(f"kill -9: {at[-1]}", flush=True)
    final = run(train + ["--out", str(killed)], timeout=1800)
    leftovers = [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]
    return {
        "kills": at,
        "kills_landed": sum(kill["landed"] for kill in at),
        "steps": KILL_STEPS,
        "uninterrupted_seconds": seconds,
        "finished": final.returncode == 0,
        "identical_to_uninterrupted": final.returncode == 0 and same_weights(straight / "model", killed / "model"),
        "temporary_folders_left": leftovers,
    }


def damage_file(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    else:  # one flipped byte near the end (inside the tensors of a safetensors file)
        data = bytearray(path.read_bytes())
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))


def damaged_checkpoints(work: Path) -> list[dict]:
    """Each file of the newest checkpoint damaged in each way: resume falls back a checkpoint;
    the same damage to every checkpoint: a one-line refusal. (In process: the Trainer the CLI
    runs, built with the run's own settings; the CLI's refusal is checked once at the end.)"""
    source = work / "straight"
    state = json.loads((list_checkpoints(source / "checkpoints")[-1] / "trainer_state.json").read_text())
    model_config = FractalConfig.from_dict(state["info"]["model_config"])
    train_config = TrainConfig.from_dict(state["info"]["train_config"])
    dataset = load_dataset("digits", train_config.image_size)
    rows = []
    names = sorted(p.name for p in list_checkpoints(source / "checkpoints")[-1].iterdir())
    for name in names:
        for how in ("flipped", "truncated", "deleted"):
            for scope in ("newest", "all"):
                run_dir = work / f"ckpt-{name}-{how}-{scope}"
                shutil.copytree(source / "checkpoints", run_dir / "checkpoints")
                found = list_checkpoints(run_dir / "checkpoints")
                for folder in found[-1:] if scope == "newest" else found:
                    damage_file(folder / name, how)
                trainer = Trainer(model_config, train_config, dataset, run_dir, progress=False)
                try:
                    trainer.resume()
                    outcome = f"resumed from step {trainer.step}"
                    ok = scope == "newest" and trainer.step == _step(found[-2])
                except CheckpointError as error:
                    outcome = str(error)
                    ok = scope == "all" and "\n" not in outcome
                rows.append({"file": name, "damage": how, "scope": scope, "ok": ok, "outcome": outcome[-200:]})
                print(f"checkpoint {name} {how} ({scope}): {'ok' if ok else 'FAILED'}: {outcome[-120:]}", flush=True)
                shutil.rmtree(run_dir)
    run_dir = work / "ckpt-cli"
    shutil.copytree(source / "checkpoints", run_dir / "checkpoints")
    for folder in list_checkpoints(run_dir / "checkpoints"):
        damage_file(folder / "model.safetensors", "flipped")
    result = run(TRAIN + ["--out", str(run_dir), "--steps", "310"])
    rows.append(
        {
            "file": "model.safetensors",
            "damage": "flipped",
            "scope": "all, through the CLI",
            "ok": one_line_refusal(result),
            "outcome": result.stderr[-200:],
        }
    )
    return rows


def _step(folder: Path) -> int:
    return int(folder.name.split("_")[1])


def damaged_models(work: Path) -> list[dict]:
    model = work / "straight" / "model"
    rows = []
    cases = {
        "weights flipped": lambda f: damage_file(f / "model.safetensors", "flipped"),
        "weights truncated": lambda f: damage_file(f / "model.safetensors", "truncated"),
        "weights deleted": lambda f: damage_file(f / "model.safetensors", "deleted"),
        "config truncated": lambda f: damage_file(f / "config.json", "truncated"),
        "config deleted": lambda f: damage_file(f / "config.json", "deleted"),
        "config: widths of another size": lambda f: _rewrite(f / "config.json", widths=[8, 16]),
        "config: widths of the wrong type": lambda f: _rewrite(f / "config.json", widths="wide"),
        "config: negative depth": lambda f: _rewrite(f / "config.json", depths=[-1, 2]),
    }
    for label, damage in cases.items():
        folder = work / "model-damaged"
        shutil.copytree(model, folder)
        damage(folder)
        out = work / "out.png"
        result = run(["generate", "three", "--model", str(folder), "--steps", "2", "-o", str(out)])
        ok = one_line_refusal(result) and not out.exists()
        rows.append({"damage": label, "ok": ok, "stderr": result.stderr.strip().splitlines()[-1:]})
        print(f"model folder, {label}: {'ok' if ok else 'FAILED'}: {result.stderr.strip()[-120:]}", flush=True)
        shutil.rmtree(folder)
        out.unlink(missing_ok=True)
    return rows


def _rewrite(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="kill -9 and resume this many times (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="when to kill (default: 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        killing = kills(work, args.kills, random.Random(args.seed))
        assert run(TRAIN + ["--out", str(work / "straight")]).returncode == 0
        checkpoints = damaged_checkpoints(work)
        models = damaged_models(work)
    report = {
        "hardware": describe_device("cpu"),
        "kills": killing,
        "damaged_checkpoints": checkpoints,
        "damaged_models": models,
    }
    print(
        f"kill -9 x{args.kills} ({killing['kills_landed']} landed mid-run): finished {killing['finished']}, "
        f"identical {killing['identical_to_uninterrupted']}"
    )
    print(f"temporary folders left: {killing['temporary_folders_left']}")
    for kind, rows in (("checkpoint", checkpoints), ("model folder", models)):
        passed = sum(row["ok"] for row in rows)
        print(f"damaged {kind}s: {passed}/{len(rows)} handled (fallback or one-line refusal)")
        for row in rows:
            if not row["ok"]:
                print(f"  FAILED {row}")
    path = RESULTS / "faults-cpu.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
