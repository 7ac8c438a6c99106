"""Server memory under a hostile client: it must stay under the bound ServerConfig states.

Runs ``fractalflow serve`` (the shipped model, ``cpu`` profile) in a subprocess twice, for
``--seconds`` each, and samples its resident memory (RSS) every 50 ms:

1. **honest** (the baseline): one client keeps the queue full with the largest jobs the
   server allows (most images, largest size, most steps), one prompt, and reads every
   job's event stream to its end;
2. **hostile**: the same jobs, each with a new, long prompt (the text encoder's cache and
   the image store fill up), plus an event stream opened for every job and never read,
   1 MB bodies with and without ``Content-Length`` (413), and made-up job and image ids (404).

What the hostile client adds to the peak must stay under what ServerConfig caps: the stored
images (``stored_images`` PNGs of at most ``max_size`` px, counted as raw RGB), the events of
the jobs kept (``max_queue + stored_images`` jobs, ``max_steps`` step events of ~300 bytes per
scale), one 64 px preview per unfinished job, and the text encoder's prompt cache.

    python benchmarks/hostile_client.py --seconds 90

Prints a table and writes ``benchmarks/results/hostile-client-cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import psutil
import torch

from fractalflow.files import atomic_write_text
from fractalflow.hardware import describe_device
from fractalflow.serving import ServerConfig
from fractalflow.serving.app import EVENT_STREAM

RESULTS = Path(__file__).parent / "results"
MB = 2**20
CONFIG = ServerConfig(profile="cpu", max_queue=16, max_size=128, max_steps=20, max_images=4, stored_images=256)
EVENT_BYTES = 300  # a step event with its preview dropped, as JSON in memory, generously
PREVIEW_BYTES = 64 * 64 * 3 * 4 // 3 + 200  # a 64 px PNG as a data URL, uncompressed at worst
PROMPT_CACHE_BYTES = 1024 * 32 * 384 * 4  # TextEncoder: 1024 prompts x 32 tokens x 384 floats
WORDS = "red blue green cat dog heart star face icon bell rocket pizza smile moon sun tree".split()


def stated_bound(config: ServerConfig) -> dict[str, float]:
    """Megabytes above the working set that ServerConfig's caps allow (see the module docstring)."""
    scales = 3  # a refinement up to max_size from the smallest trained size passes at most 3 scales here
    parts = {
        "stored images": config.stored_images * config.max_size**2 * 3,
        "job events": (config.max_queue + config.stored_images) * config.max_steps * scales * EVENT_BYTES,
        "previews": config.max_queue * PREVIEW_BYTES,
        "prompt cache": PROMPT_CACHE_BYTES,
    }
    return {name: value / MB for name, value in parts.items()}


def start_server(config: ServerConfig, folder: Path) -> tuple[subprocess.Popen, str]:
    path = folder / "server.json"
    config.save_json(path)
    server = subprocess.Popen(
        [sys.executable, "-m", "fractalflow.cli", "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://{config.host}:{config.port}"
    for _ in range(600):
        try:
            httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
            return server, base
        except (httpx.HTTPError, OSError):
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not come up")


class RssSampler(threading.Thread):
    """The process's RSS every 50 ms while running: its peak, and one reading a second."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()
        self.per_second: list[int] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            rss = self.process.memory_info().rss
            self.peak = max(self.peak, rss)
            if time.monotonic() - started >= len(self.per_second):
                self.per_second.append(rss)
            time.sleep(0.05)


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(40))[: CONFIG.max_prompt_length]


async def attack(base: str, seconds: float, hostile: bool) -> dict[str, int]:
    """Keep the queue full for ``seconds``; ``hostile`` adds what an attacker would (docstring)."""
    rng, counts, streams, followers = random.Random(0), {}, [], []
    job = {"resolution": "high", "num_images": CONFIG.max_images, "steps": CONFIG.max_steps, "prompt": "red heart"}
    big = b'{"prompt": "' + b"x" * MB + b'"}'

    async def chunked():  # no Content-Length
        yield big

    def count(status: int) -> None:
        counts[str(status)] = counts.get(str(status), 0) + 1

    async def follow(client: httpx.AsyncClient, url: str) -> None:
        async with client.stream("GET", url) as events:
            async for _ in events.aiter_lines():
                pass

    async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            body = {**job, "prompt": prompt(rng)} if hostile else job
            response = await client.post("/v1/generate", json=body)
            count(response.status_code)
            if response.status_code == 202 and hostile:  # follow it, and never read
                request = client.build_request("GET", response.json()["events_url"], headers={"Accept": EVENT_STREAM})
                streams.append(await client.send(request, stream=True))
            elif response.status_code == 202:
                followers.append(asyncio.create_task(follow(client, response.json()["events_url"])))
            if hostile:
                for content in (big, chunked()):
                    count((await client.post("/v1/generate", content=content)).status_code)
                for path in (f"/v1/jobs/{rng.getrandbits(64):016x}", f"/v1/images/{rng.getrandbits(64):016x}.png"):
                    count((await client.get(path)).status_code)
            await asyncio.sleep(0.05)
        counts["streams held unread"] = len(streams)
        for stream in streams:
            await stream.aclose()
        for follower in followers:
            follower.cancel()
    return counts


def measure(config: ServerConfig, seconds: float, hostile: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        server, base = start_server(config, Path(folder))
        try:
            idle = psutil.Process(server.pid).memory_info().rss
            sampler = RssSampler(server.pid)
            sampler.start()
            counts = asyncio.run(attack(base, seconds, hostile))
            sampler.stop.set()
            sampler.join()
        finally:
            server.terminate()
            server.wait(60)
    return {
        "client": "hostile" if hostile else "honest",
        "responses": counts,
        "idle_rss_mb": idle / MB,
        "peak_rss_mb": sampler.peak / MB,
        "rss_per_second_mb": [round(rss / MB, 1) for rss in sampler.per_second],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0, help="how long each client runs (default: 90)")
    parser.add_argument("--port", type=int, default=8765, help="loopback port for the server (default: 8765)")
    args = parser.parse_args()
    config = ServerConfig(**{**CONFIG.to_dict(), "port": args.port})
    honest, hostile = (measure(config, args.seconds, hostile) for hostile in (False, True))
    bound = stated_bound(config)
    added = hostile["peak_rss_mb"] - honest["peak_rss_mb"]
    report = {
        "hardware": describe_device("cpu"),
        "torch": torch.__version__,
        "config": config.to_dict(),
        "seconds": args.seconds,
        "rows": [honest, hostile],
        "added_by_hostile_mb": added,
        "bound_mb": bound,
        "bound_total_mb": sum(bound.values()),
        "within_bound": added <= sum(bound.values()),
    }
    print(f"{'client':<8} {'idle MB':>8} {'peak MB':>8}  responses")
    for row in (honest, hostile):
        print(f"{row['client']:<8} {row['idle_rss_mb']:8.1f} {row['peak_rss_mb']:8.1f}  {row['responses']}")
    for name, value in bound.items():
        print(f"bound: {name:<16} {value:6.1f} MB")
    print(
        f"hostile peak - honest peak: {added:.1f} MB; bound {report['bound_total_mb']:.1f} MB; "
        f"within: {report['within_bound']}"
    )
    path = RESULTS / "hostile-client-cpu.json"
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
