"""Which device to run on, and a one-line name of the hardware a number was measured on,
for benchmark reports."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` as a device (``None``: CUDA if available, else the CPU), or a one-line
    ValueError when it is not a device name or not usable here."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {str(name)!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not usable.get(device.type, False):
        raise ValueError(f"device {str(name)!r} is not available on this machine (cpu always is)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_device(device: torch.device | str = "cpu") -> str:
    """E.g. ``"NVIDIA H100 80GB HBM3"`` or ``"AMD EPYC 9B14 (2 cores, 2 torch threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()} ({cores} cores, {torch.get_num_threads()} torch threads)"
