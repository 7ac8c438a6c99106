"""Model folders in the diffusers convention: ``config.json`` beside ``model.safetensors``
(or shards with ``model.safetensors.index.json`` when large). Never pickle.

Any module with a ``config`` (a JSON dataclass) and a ``config_class`` attribute can be
stored this way: the FractalTransformer, the evaluation encoders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fractalflow.files import atomic_directory
from fractalflow.model.transformer import FractalTransformer

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"


def save_model(
    model: torch.nn.Module, folder: str | Path, dtype: torch.dtype | None = None, max_shard_bytes: int = 2 * 1024**3
) -> None:
    """Write ``model`` to ``folder`` (replaced as a whole), weights cast to ``dtype`` if given."""
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        model.config.save_json(tmp / CONFIG_NAME, _class_name=type(model).__name__)
        shards = _shard(state, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], tmp / WEIGHTS_NAME, metadata={"format": "pt"})
            return
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, tmp / name, metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (tmp / INDEX_NAME).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )

    atomic_directory(Path(folder), fill)


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """All weights of a model folder, single file or sharded."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return load_file(single)
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_file(folder / name))
        return state
    raise FileNotFoundError(f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def load_model(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    model_class: type[torch.nn.Module] = FractalTransformer,
) -> torch.nn.Module:
    """A ``model_class`` (default FractalTransformer) from a local model folder, in ``dtype`` on ``device``."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: {CONFIG_NAME} is missing")
    config = model_class.config_class.load_json(config_path)
    with torch.device("meta"):
        model = model_class(config)
    state = {k: v.to(dtype) for k, v in load_state(folder).items()}
    # not strict, to name the mismatch in one line; the model's own loading renames old keys first
    found = model.load_state_dict(state, strict=False, assign=True)
    if found.missing_keys or found.unexpected_keys:
        raise ValueError(
            f"{folder}: weights do not match config.json "
            f"(missing {sorted(found.missing_keys)[:5]}, unexpected {sorted(found.unexpected_keys)[:5]})"
        )
    return model.to(device).eval()
