"""Training in several processes through Accelerate (``accelerate launch``, ``torchrun``).

Every process draws the same global batch from the same random stream (indices, caption
phrasing, times, noise, condition dropout) and trains on its own equal slice of it; DDP
averages the gradients, so the step is that of one process on the whole batch, and the
loss curve matches a one-process run within float reduction order. Checkpoints, snapshots,
logs and the exported model are written by the main process only; every process reads the
same checkpoint on resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def launched_processes() -> int:
    """How many processes ``accelerate launch`` or ``torchrun`` started (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Processes:
    """This process's place among the training processes. ``accelerator``: Accelerate's, when
    there are several (None for a plain one-process run, which then needs no Accelerate)."""

    accelerator: Any = None
    rank: int = 0
    world: int = 1

    @classmethod
    def detect(cls, device: torch.device) -> Processes:
        if launched_processes() <= 1:
            return cls()
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu")
        return cls(accelerator, accelerator.process_index, accelerator.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, wanted: torch.device) -> torch.device:
        """Each process's own device (``cuda:<local rank>`` on a multi-GPU machine)."""
        return wanted if self.accelerator is None else self.accelerator.device

    def batch(self, size: int) -> int:
        """The global batch rounded to a multiple of the process count (at least one image each)."""
        return max(self.world, round(size / self.world) * self.world)

    def shard(self, batch: int) -> slice:
        """This process's rows of a global batch of ``batch`` (a multiple of the process count)."""
        rows = batch // self.world
        return slice(self.rank * rows, (self.rank + 1) * rows)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to run forward and backward through: DDP over ``model`` with several processes."""
        return model if self.accelerator is None else self.accelerator.prepare_model(model)

    def mean(self, value: Tensor) -> float:
        """The mean of a per-process scalar over all processes."""
        if self.accelerator is None:
            return value.item()
        return float(self.accelerator.reduce(value.detach().float().reshape(1), reduction="mean"))

    def wait(self) -> None:
        """Until every process gets here (after the main one writes a checkpoint)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
