"""Training checkpoints: everything needed to resume a run exactly, in safetensors and JSON.

A checkpoint is a folder ``step_XXXXXXX`` written atomically (built beside, then renamed)
holding the raw and EMA weights, the optimizer moments, the schedule and RNG states, and a
``manifest.json`` of their SHA-256 digests. Loading verifies the digests and that every
weight is finite; :func:`load_newest_intact` falls back to an older checkpoint when the
newest is damaged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fractalflow.files import atomic_directory

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # trainer_state.json's "format" from which on a checkpoint must have a manifest
# what a kill can leave beside the checkpoints: atomic_directory's build and swap folders
TEMPORARY_PATTERN = re.compile(r"^\.step_\d+\.(.+\.tmp|old)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: missing, altered or non-finite contents."""


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


def checkpoint_folder(folder: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives under ``folder``."""
    return folder / f"step_{step:07d}"


def save_checkpoint(folder: Path, state: TrainingState, keep: int) -> Path:
    """Write ``state`` to ``folder/step_XXXXXXX`` and keep only the newest ``keep`` checkpoints."""
    target = checkpoint_folder(folder, state.step)
    optimizer_tensors, optimizer_meta = _split_optimizer(state.optimizer)

    def fill(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.model.items()}, tmp / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.ema.items()}, tmp / "ema.safetensors")
        save_file(optimizer_tensors, tmp / "optimizer.safetensors")
        save_file(state.rng, tmp / "rng.safetensors")
        meta = {
            "format": MANIFEST_FORMAT,
            "step": state.step,
            "optimizer": optimizer_meta,
            "scheduler": state.scheduler,
            "info": state.info,
        }
        (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=2))
        digests = {p.name: file_digest(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps(digests, indent=2))

    remove_temporaries(folder)
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


def remove_temporaries(folder: Path) -> None:
    """Delete half-written checkpoint folders that a killed run left in ``folder``."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and TEMPORARY_PATTERN.match(path.name):
                shutil.rmtree(path, ignore_errors=True)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest(path: Path) -> None:
    """Raise :class:`CheckpointError` if a file the manifest lists is missing or altered.
    Checkpoints written before manifests existed have none and are checked on loading only."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        if _state_format(path) >= MANIFEST_FORMAT:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} is missing")
        return
    try:
        digests = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} cannot be read ({error})") from None
    for name, expected in digests.items():
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if file_digest(path / name) != expected:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its SHA-256 in {MANIFEST}")


def _state_format(path: Path) -> int:
    """The format trainer_state.json says the checkpoint was written in (1 before manifests)."""
    try:
        return int(json.loads((path / "trainer_state.json").read_text()).get("format", 1))
    except (OSError, ValueError, AttributeError):
        return 1  # unreadable: loading will say so


def load_checkpoint(path: Path) -> TrainingState:
    """Load and verify one checkpoint; :class:`CheckpointError` names what is wrong with it."""
    verify_manifest(path)
    try:
        meta = json.loads((path / "trainer_state.json").read_text())
        state = TrainingState(
            step=meta["step"],
            model=load_file(path / "model.safetensors"),
            ema=load_file(path / "ema.safetensors"),
            optimizer=_join_optimizer(load_file(path / "optimizer.safetensors"), meta["optimizer"]),
            scheduler=meta["scheduler"],
            rng=load_file(path / "rng.safetensors"),
            info=meta["info"],
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(error).__name__}: {error}") from None
    for kind, weights in (("model", state.model), ("EMA", state.ema)):
        bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
        if bad:
            raise CheckpointError(
                f"checkpoint {path}: {kind} weights are not finite ({bad[0]} and {len(bad) - 1} more)"
            )
    return state


def load_newest_intact(folder: Path) -> tuple[TrainingState | None, list[str]]:
    """The newest checkpoint in ``folder`` that loads and verifies, and why each newer one did not."""
    skipped = []
    for path in reversed(list_checkpoints(folder)):
        try:
            return load_checkpoint(path), skipped
        except CheckpointError as error:
            skipped.append(str(error))
    return None, skipped
