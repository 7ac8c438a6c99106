"""Training checkpoints: everything needed to resume a run exactly, in safetensors and JSON.

A checkpoint is a folder ``step_XXXXXXX`` written atomically (built beside, then renamed)
holding the raw and EMA weights, the optimizer moments, the schedule and RNG states.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fractalflow.files import atomic_directory

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


@dataclass
class TrainingState:
    """The resumable state of a run, as plain tensors and JSON-able values."""

    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]
    info: dict[str, Any]


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, state: TrainingState, keep: int) -> Path:
    """Write ``state`` to ``folder/step_XXXXXXX`` and keep only the newest ``keep`` checkpoints."""
    target = folder / f"step_{state.step:07d}"
    optimizer_tensors, optimizer_meta = _split_optimizer(state.optimizer)

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.model.items()}, tmp / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.ema.items()}, tmp / "ema.safetensors")
        save_file(optimizer_tensors, tmp / "optimizer.safetensors")
        save_file(state.rng, tmp / "rng.safetensors")
        meta = {"step": state.step, "optimizer": optimizer_meta, "scheduler": state.scheduler, "info": state.info}
        (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=2))

    atomic_directory(target, fill)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (half-written temp folders are ignored)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def load_checkpoint(path: Path) -> TrainingState:
    meta = json.loads((path / "trainer_state.json").read_text())
    return TrainingState(
        step=meta["step"],
        model=load_file(path / "model.safetensors"),
        ema=load_file(path / "ema.safetensors"),
        optimizer=_join_optimizer(load_file(path / "optimizer.safetensors"), meta["optimizer"]),
        scheduler=meta["scheduler"],
        rng=load_file(path / "rng.safetensors"),
        info=meta["info"],
    )
