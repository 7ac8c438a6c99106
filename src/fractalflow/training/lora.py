"""LoRA adapters (through ``peft``) on a FractalTransformer's attention and MLP linears.

``add_lora(model, rank)`` injects low-rank adapters into the self-attention (``qkv``,
``out``), cross-attention (``q``, ``kv``, ``out``) and feed-forward (``proj``, ``out``)
linears and freezes everything else; the trainer then trains only them. An adapter folder
holds ``adapter_config.json`` (rank, alpha, targets, the base model's weight hash) and
``adapter_model.safetensors`` (the LoRA weights only): :func:`save_adapter`,
:func:`load_adapter`. ``FractalFlowPipeline.load_adapter`` applies one to a loaded model.

Reference: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; the
injection is peft's ``inject_adapter_in_model``, which works on any ``torch.nn.Module``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fractalflow.files import atomic_directory

TARGETS = r".*\.(attn\.(qkv|out)|cross\.(q|kv|out)|mlp\.(proj|out))"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_RANK = 256


def lora_config(rank: int, alpha: float | None = None):
    try:
        from peft import LoraConfig
    except ImportError as error:
        raise ImportError("LoRA adapters need peft: pip install 'fractalflow[lora]'") from error

    if not 1 <= rank <= MAX_RANK:
        raise ValueError(f"LoRA rank={rank} must be from 1 to {MAX_RANK}")
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, target_modules=TARGETS)


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None = None) -> torch.nn.Module:
    """Inject LoRA adapters of ``rank`` (in place) and leave only them trainable."""
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(lora_config(rank, alpha), model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if "lora_" in k}


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own weights under their names without adapters (peft's ``base_layer`` folded back)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}


def save_adapter(model: torch.nn.Module, folder: str | Path, rank: int, alpha: float, base: str = "") -> None:
    """Write the LoRA weights of ``model`` and their config (with ``base``: what they adapt)."""
    config = {"rank": rank, "alpha": alpha, "targets": TARGETS, "base_model": base}
    state = {k: v.to(torch.float32) for k, v in lora_state(model).items()}
    if not state:
        raise ValueError("the model has no LoRA weights to save")

    def fill(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file(state, str(tmp / ADAPTER_WEIGHTS))

    atomic_directory(Path(folder), fill)


def load_adapter(model: torch.nn.Module, folder: str | Path) -> dict:
    """Inject the adapter in ``folder`` into ``model`` and load its weights; its config."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} is not an adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    add_lora(model, int(config["rank"]), float(config["alpha"]))
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    expected = set(lora_state(model))
    if set(weights) != expected:
        missing, unexpected = sorted(expected - set(weights))[:3], sorted(set(weights) - expected)[:3]
        raise ValueError(f"{folder}: the adapter does not fit this model (missing {missing}, unexpected {unexpected})")
    dtype = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False)
    model.requires_grad_(False)
    return config
