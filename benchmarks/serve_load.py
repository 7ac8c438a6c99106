"""The server under concurrent clients: dynamic batching against one job at a time.

Starts ``fractalflow serve``'s app in this process (uvicorn on loopback) with the shipped
model, sends ``--clients`` requests at once (same settings, different seeds), follows each
job's event stream to its end, and reports jobs per second and the median and worst job
latency seen by the clients. Baseline: the same server with ``max_batch=1`` (each job runs
alone), measured in the same run.

    python benchmarks/serve_load.py              # ~2 min on 2 CPU cores
    python benchmarks/serve_load.py --clients 32

Prints a table and writes ``benchmarks/results/serve-load-<device>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx
import torch
import uvicorn

from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.inference import PROFILES, InferenceEngine
from fractalflow.serving import ServerConfig, create_app

RESULTS = Path(__file__).parent / "results"
REQUEST = {"prompt": "red heart", "resolution": "standard", "steps": 20, "early_stop": 0.02}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def one_job(client: httpx.AsyncClient, seed: int) -> float:
    begin = time.perf_counter()
    job = (await client.post("/v1/generate", json={**REQUEST, "seed": seed})).raise_for_status().json()
    async with client.stream("GET", job["events_url"]) as events:
        async for line in events.aiter_lines():
            if line.startswith("event: ") and line[7:] in ("done", "error", "cancelled"):
                if line[7:] != "done":
                    raise RuntimeError(f"job {job['id']} ended with {line[7:]}")
                break
    return time.perf_counter() - begin


async def load(base: str, clients: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        await one_job(client, 10_000)  # warm-up: loads the model and the text encoder
        begin = time.perf_counter()
        latencies = await asyncio.gather(*(one_job(client, seed) for seed in range(clients)))
        wall = time.perf_counter() - begin
    return {
        "jobs_per_s": clients / wall,
        "median_latency_s": statistics.median(latencies),
        "worst_latency_s": max(latencies),
        "wall_s": wall,
    }


def serve_and_load(label: str, max_batch: int, window_ms: float, clients: int) -> dict:
    profile = replace(PROFILES["cpu"], max_batch=max_batch, batch_window_ms=window_ms)
    engine = InferenceEngine(profile=profile)
    port = free_port()
    config = ServerConfig(port=port, max_queue=clients + 1, max_images=max_batch)
    server = uvicorn.Server(uvicorn.Config(create_app(config, engine), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        measured = asyncio.run(load(f"http://127.0.0.1:{port}", clients))
    finally:
        server.should_exit = True
        thread.join()
    return {
        "setting": label,
        "max_batch": max_batch,
        "batch_window_ms": window_ms,
        **measured,
        "batches": engine.batches_run[1:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16, help="concurrent requests (default: 16)")
    args = parser.parse_args()
    rows = [
        serve_and_load("one job at a time (baseline)", 1, 0.0, args.clients),
        serve_and_load("dynamic batching, max 8, 20 ms window", 8, 20.0, args.clients),
    ]
    base = rows[0]
    print(f"\n{'setting':40s} {'jobs/s':>7s} {'x base':>6s} {'median s':>8s} {'worst s':>8s}  batches")
    for row in rows:
        print(
            f"{row['setting']:40s} {row['jobs_per_s']:7.2f} {row['jobs_per_s'] / base['jobs_per_s']:6.2f} "
            f"{row['median_latency_s']:8.2f} {row['worst_latency_s']:8.2f}  {row['batches']}"
        )
    path = RESULTS / f"serve-load-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    report = {
        "hardware": describe_device("cpu"),
        "torch": torch.__version__,
        "clients": args.clients,
        "request": REQUEST,
        "rows": rows,
    }
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
