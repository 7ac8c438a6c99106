"""Counting the FLOPs of a forward pass (attention included)."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fractalflow.model.conditioning import Conditioning


def forward_flops(model: torch.nn.Module, size: int, text_tokens: int = 16) -> int:
    """FLOPs of one forward pass of a velocity model (``model.config`` names its inputs) on
    one ``size``×``size`` image (multiply-add = 2 FLOPs).

    Attention runs on the math backend while counting: the fused CPU kernels are
    invisible to the counter.
    """
    return module_flops(model, size, text_tokens)[type(model).__name__]


def module_flops(model: torch.nn.Module, size: int, text_tokens: int = 16) -> dict[str, int]:
    """FLOPs of one forward pass (as :func:`forward_flops`) per module, keyed by the module's
    path below the model's class name (``"FractalTransformer.body.inner"``); the class name
    alone is the whole pass."""
    config = model.config
    device = next(model.parameters()).device
    x = torch.zeros(1, config.in_channels, size, size, device=device)
    t = torch.full((1,), 0.5, device=device)
    if config.is_class_conditional:
        cond = Conditioning(labels=torch.zeros(1, dtype=torch.long, device=device))
    else:
        cond = Conditioning(
            pooled=torch.zeros(1, config.cond_dim, device=device),
            tokens=torch.zeros(1, text_tokens, config.cond_dim, device=device),
        )
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    return {**per_module, type(model).__name__: counter.get_total_flops()}
