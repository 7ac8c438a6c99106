"""Inference profiles (``gpu`` / ``cpu`` / ``edge``) and ``auto``, which picks one from the
device and the free memory it measures."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import psutil
import torch

from fractalflow.config import JsonConfig
from fractalflow.model.adaptive_policies import check_adaptive

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 1024**3


@dataclass(frozen=True)
class InferenceProfile(JsonConfig):
    """How an :class:`InferenceEngine` runs a model.

    ``dtype``: the network's compute precision (fp32, or bf16/fp16 under autocast).
    ``quantize``: ``int8`` replaces Linear layers by dynamically quantized ones (CPU only).
    ``compile``: ``torch.compile`` the network. ``threads``: CPU threads (0 = torch's choice).
    ``max_batch``: most images one batch may hold; ``batch_window_ms``: how long the batcher
    waits for compatible requests to join a batch. ``adaptive``: the step caching a request
    gets when it names none ("off", "auto" or a speed-up; see ``FractalFlowPipeline.generate``).
    """

    name: str = "cpu"
    device: str = "cpu"
    dtype: str = "fp32"
    quantize: str = "none"
    compile: bool = False
    threads: int = 0
    max_batch: int = 8
    batch_window_ms: float = 10.0
    adaptive: str | float = "off"

    def __post_init__(self) -> None:
        check_adaptive(self.adaptive)
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype={self.dtype!r}; allowed: {sorted(DTYPES)}")
        if self.quantize not in ("none", "int8"):
            problems.append(f"quantize={self.quantize!r}; allowed: 'none', 'int8'")
        if self.quantize == "int8" and not self.device.startswith("cpu"):
            problems.append("int8 dynamic quantization runs on the CPU only")
        if self.threads < 0 or self.max_batch < 1 or self.batch_window_ms < 0:
            problems.append("threads >= 0, max_batch >= 1 and batch_window_ms >= 0 are required")
        if problems:
            raise ValueError(f"invalid InferenceProfile {self.name!r}: " + "; ".join(problems))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


PROFILES = {
    "gpu": InferenceProfile(name="gpu", device="cuda", dtype="bf16", compile=True, max_batch=64, batch_window_ms=20.0),
    # adaptive "auto": the model's calibrated 1.5x step caching (off for a model without adaptive.json);
    # measured on the CPU only (docs/benchmarks.md, "Adaptive compute"), so the gpu profile stays off
    "cpu": InferenceProfile(name="cpu", device="cpu", dtype="fp32", max_batch=8, batch_window_ms=10.0, adaptive="auto"),
    "edge": InferenceProfile(
        name="edge", dtype="fp32", quantize="int8", max_batch=2, batch_window_ms=0.0, adaptive="auto"
    ),
}
# below this much free memory a GPU is not worth it, and a CPU machine is treated as an edge device
MIN_GPU_FREE = 2 * GIB
MIN_CPU_AVAILABLE = 2 * GIB


@dataclass(frozen=True)
class DeviceReading:
    """What ``auto`` decides from: whether CUDA is usable, free GPU and available CPU memory, cores."""

    cuda: bool
    gpu_free_bytes: int
    cpu_available_bytes: int
    cpu_cores: int
    cpu_bf16: bool = False


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matrix products natively here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def read_device() -> DeviceReading:
    cuda = torch.cuda.is_available()
    gpu_free = torch.cuda.mem_get_info()[0] if cuda else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return DeviceReading(cuda, gpu_free, psutil.virtual_memory().available, cores, cpu_has_native_bf16())


def auto_profile(reading: DeviceReading | None = None) -> InferenceProfile:
    """``gpu`` with CUDA and at least 2 GiB free on it; else ``edge`` under 2 GiB of available
    memory; else ``cpu``, in bf16 where the CPU has native bf16 (0.59-0.67x the fp32 time
    for the default model, benchmarks/cpu_modes.py). CPU profiles use every core this
    process may run on."""
    reading = reading or read_device()
    if reading.cuda and reading.gpu_free_bytes >= MIN_GPU_FREE:
        return PROFILES["gpu"]
    if reading.cpu_available_bytes < MIN_CPU_AVAILABLE:
        return replace(PROFILES["edge"], threads=reading.cpu_cores)
    return replace(PROFILES["cpu"], threads=reading.cpu_cores, dtype="bf16" if reading.cpu_bf16 else "fp32")


def get_profile(profile: str | InferenceProfile) -> InferenceProfile:
    """A profile by name (``auto``, ``gpu``, ``cpu``, ``edge``) or as given."""
    if isinstance(profile, InferenceProfile):
        return profile
    if profile == "auto":
        return auto_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {['auto', *PROFILES]}")
    return PROFILES[profile]
