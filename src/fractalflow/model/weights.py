"""Model folders in the diffusers convention: ``config.json`` beside ``model.safetensors``
(or shards with ``model.safetensors.index.json`` when large). Never pickle.

Every file written here carries the SHA-256 of its tensor bytes in its safetensors metadata;
:func:`load_model` verifies it (when present), the config, the shapes and that every weight
is finite, and names the first problem in one line (a ``ValueError``) rather than load a
damaged model that would draw black images.

Any module with a ``config`` (a JSON dataclass) and a ``config_class`` attribute can be
stored this way: the FractalTransformer, the evaluation encoders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fractalflow.config import JsonConfig
from fractalflow.files import atomic_directory
from fractalflow.model.transformer import FractalTransformer

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
MAX_SHARD_BYTES = 2 * 1024**3  # weights per safetensors file unless a caller asks for smaller
DIGEST_KEY = "tensors_sha256"  # safetensors metadata: SHA-256 of the tensor bytes, keys in sorted order


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """One safetensors file, its digest in the metadata."""
    save_file(tensors, path, metadata={"format": "pt", DIGEST_KEY: tensors_digest(tensors)})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """One safetensors file, verified against its digest where it has one."""
    try:
        with safe_open(path, "pt") as handle:  # one open: the metadata and the tensors
            expected = (handle.metadata() or {}).get(DIGEST_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path} is damaged or not a safetensors file ({error})") from None
    if expected is not None and tensors_digest(tensors) != expected:
        raise ValueError(f"{path} is damaged: its tensors do not match the SHA-256 written with them")
    return tensors


def save_model(
    model: torch.nn.Module,
    folder: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    config: JsonConfig | None = None,
) -> None:
    """Write ``model`` to ``folder`` (replaced as a whole), weights cast to ``dtype`` if given;
    ``config`` replaces ``model.config`` in ``config.json`` (same architecture, other metadata)."""
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}

    def fill(tmp: Path) -> None:
        (config or model.config).save_json(tmp / CONFIG_NAME, _class_name=type(model).__name__)
        shards = _shard(state, max_shard_bytes)
        if len(shards) == 1:
            save_weights(shards[0], tmp / WEIGHTS_NAME)
            return
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_weights(shard, tmp / name)
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
        return load_weights(single)
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_weights(folder / name))
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
    try:
        config = model_class.config_class.load_json(config_path)
        with torch.device("meta"):
            model = model_class(config)
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError) as error:
        raise ValueError(f"{config_path} does not describe a {model_class.__name__}: {error}") from None
    state = {k: v.to(dtype) for k, v in load_state(folder).items()}
    # not strict, to name the mismatch in one line; the model's own loading renames old keys first
    try:
        found = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:  # shapes that differ from the config's
        reason = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise ValueError(f"{folder}: weights do not match config.json ({reason})") from None
    if found.missing_keys or found.unexpected_keys:
        raise ValueError(
            f"{folder}: weights do not match config.json "
            f"(missing {sorted(found.missing_keys)[:5]}, unexpected {sorted(found.unexpected_keys)[:5]})"
        )
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if bad:
        raise ValueError(f"{folder}: weights are not finite ({bad[0]}, {len(bad)} tensors in all)")
    return model.to(device).eval()
