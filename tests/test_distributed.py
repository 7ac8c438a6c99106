"""Training in two processes through Accelerate (gloo on the CPU): with the same global batch
the loss curve and the weights follow one process's, and a killed run resumes where it was."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow
ACCELERATE = Path(sys.executable).with_name("accelerate")
STEPS = 12
TRAIN = [
    "train", "--data", "digits", "--preset", "tiny", "--device", "cpu", "--image-size", "16",
    "--batch-size", "8", "--steps", str(STEPS), "--warmup-steps", "2", "--learning-rate", "2e-3",
    "--log-every", "1", "--checkpoint-every", "4", "--no-progress", "--no-history",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command(out: Path, processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "fractalflow.cli", *TRAIN, "--out", str(out)]
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
    launch += ["--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "-m", "fractalflow.cli", *TRAIN, "--out", str(out)]


def environment() -> dict[str, str]:
    # one thread per process in both runs, so neither oversubscribes two cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train(out: Path, processes: int) -> None:
    done = subprocess.run(command(out, processes), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def losses(out: Path) -> list[float]:
    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    return [scalar.value for scalar in events.Scalars("train/loss")]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    train(root / "one", 1)
    train(root / "two", 2)
    return root


def test_two_processes_follow_one_on_the_same_global_batch(runs):
    one, two = losses(runs / "one"), losses(runs / "two")
    assert len(one) == len(two) == STEPS
    assert max(abs(a - b) / a for a, b in zip(one, two)) < 1e-3  # float reduction order only
    assert one[-1] < one[0]  # it trained
    final_one, final_two = weights(runs / "one"), weights(runs / "two")
    assert final_one.keys() == final_two.keys()
    assert max((final_one[k] - final_two[k]).abs().max().item() for k in final_one) < 1e-3


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(runs, tmp_path):
    out = tmp_path / "killed"
    run = subprocess.Popen(command(out, 2), env=environment(), start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "step_0000008").is_dir():
        assert run.poll() is None and time.monotonic() < deadline, "no checkpoint at step 8 before the run ended"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and both training processes, mid-run
    run.wait()
    assert not (out / "model").exists()
    train(out, 2)
    resumed, uninterrupted = weights(out), weights(runs / "two")
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed) < 1e-6
