"""The transformer and the text encoder as ONNX graphs, with their parity against torch.

``export_onnx(pipeline, folder)`` writes:

- ``transformer.onnx``: ``(x, t, pooled, tokens, mask, drop) -> velocity``, x ``(B, C, S, S)``
  at one image size (the window masks and rotary angles are fixed by the token grid),
  batch and text length dynamic; ``drop`` ``(B,)`` bool selects the learned null condition, so
  classifier-free guidance runs the conditional and unconditional rows in one batch;
- ``text_encoder.onnx``: MiniLM ``(ids, mask) -> (tokens, pooled)``, batch and length dynamic,
  with the pooling and normalisation of :class:`~fractalflow.model.text.TextEncoder`;
- ``tokenizer.json`` (the WordPiece vocabulary), ``config.json`` (model settings),
  ``generation_config.json`` (sampling defaults) and ``onnx_export.json`` (what was exported
  and the measured parity).

The graphs are traced by torch's exporter at opset 18 in fp32; parity is the largest absolute
difference between onnxruntime (CPU) and torch on the same inputs.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fractalflow.files import atomic_write_text
from fractalflow.model.attention import rope_angles, window_region_mask
from fractalflow.model.conditioning import Conditioning
from fractalflow.model.text import MiniLMEncoder

TRANSFORMER_FILE = "transformer.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"
MANIFEST_FILE = "onnx_export.json"
OPSET = 18
PARITY_LIMIT = 1e-3  # largest |onnxruntime - torch| accepted at export, fp32 on the CPU


@dataclass
class ExportSettings:
    """What to export. ``size``: the image side the transformer graph takes (a multiple of the
    model's downsampling; the model's trained size when 0). ``parity_batch``: rows of random
    inputs the parity check runs."""

    size: int = 0
    opset: int = OPSET
    parity_batch: int = 2
    parity_limit: float = PARITY_LIMIT
    seed: int = 0


@dataclass
class ExportReport:
    """What an export wrote (its ``onnx_export.json``): no path, as the folder is written aside,
    moved after, and served to browsers."""

    size: int
    opset: int
    max_length: int  # prompt tokens the text encoder reads (truncation)
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    parity: dict[str, float] = field(default_factory=dict)  # graph -> max |onnxruntime - torch|

    def to_dict(self) -> dict:
        return asdict(self)


class VelocityGraph(nn.Module):
    """The transformer with its conditioning spelled out as tensors, as an ONNX graph takes it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor, pooled: Tensor, tokens: Tensor, mask: Tensor, drop: Tensor) -> Tensor:
        return self.model(x, t, Conditioning(pooled=pooled, tokens=tokens, mask=mask), drop)


class TextGraph(nn.Module):
    """MiniLM with the mean pooling and normalisation of ``TextEncoder``:
    ids ``(B, L)`` int64, mask ``(B, L)`` bool -> tokens ``(B, L, 384)``, pooled ``(B, 384)``."""

    def __init__(self, encoder: MiniLMEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(ids, mask)
        weights = mask[..., None].to(hidden.dtype)
        pooled = F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
        return hidden, pooled


def _export(module: nn.Module, inputs: tuple, path: Path, names: tuple, outputs: tuple, dynamic: dict, opset: int):
    clear_shape_caches()
    try:
        _trace(module, inputs, path, names, outputs, dynamic, opset)
    finally:
        clear_shape_caches()  # tracing fills them with fake tensors


def clear_shape_caches() -> None:
    """Empty the caches of rotary angles and window masks (keyed by grid size)."""
    rope_angles.cache_clear()
    window_region_mask.cache_clear()


def _trace(module: nn.Module, inputs: tuple, path: Path, names: tuple, outputs: tuple, dynamic: dict, opset: int):
    # the exporter's notes (axis names, deprecations, torchvision operators it skips) are not the user's to fix
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(names),
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def open_session(path: Path, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """An onnxruntime session on ``path`` that logs only errors."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=list(providers))


def _max_difference(session, module: nn.Module, feeds: dict[str, Tensor]) -> float:
    with torch.no_grad():
        expected = module(*feeds.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = session.run(None, {name: value.numpy() for name, value in feeds.items()})
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))


def transformer_inputs(model: nn.Module, size: int, batch: int, length: int, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1:, length - 2 :] = False  # later rows are shorter prompts
    return {
        "x": torch.randn(batch, config.in_channels, size, size, generator=generator),
        "t": torch.rand(batch, generator=generator),
        "pooled": F.normalize(torch.randn(batch, config.cond_dim, generator=generator), dim=-1),
        "tokens": torch.randn(batch, length, config.cond_dim, generator=generator),
        "mask": mask,
        "drop": torch.arange(batch) % 2 == 1,  # every other row takes the null condition
    }


def text_inputs(batch: int, length: int, vocab: int, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1:, length - 3 :] = False
    return {"ids": ids.masked_fill(~mask, 0), "mask": mask}


def export_onnx(pipeline, folder: str | Path, settings: ExportSettings | None = None) -> ExportReport:
    """Export ``pipeline``'s transformer and text encoder to ``folder`` (replaced whole, written
    next to it first so a failed export leaves nothing behind); raises when a graph's parity
    is worse than ``settings.parity_limit``."""
    settings = settings or ExportSettings()
    model = pipeline.model.float().eval()
    if model.config.num_classes:
        raise ValueError("ONNX export covers text-conditional models; this model is class-conditional")
    size = settings.size or model.config.sample_size
    model.check_size(size, size)
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # served as static files: readable like any folder, not mkdtemp's 0700
    try:
        report = _write(pipeline, model, staging, size, settings)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _write(pipeline, model: nn.Module, out: Path, size: int, settings: ExportSettings) -> ExportReport:
    text = pipeline.text_encoder
    report = ExportReport(size=size, opset=settings.opset, max_length=text.max_length)
    velocity = VelocityGraph(model).eval()
    example = transformer_inputs(model, size, 2, 6, settings.seed)
    _export(
        velocity,
        tuple(example.values()),
        out / TRANSFORMER_FILE,
        tuple(example),
        ("velocity",),
        {
            "x": {0: "batch"},
            "t": {0: "batch"},
            "pooled": {0: "batch"},
            "tokens": {0: "batch", 1: "length"},
            "mask": {0: "batch", 1: "length"},
            "drop": {0: "batch"},
            "velocity": {0: "batch"},
        },
        settings.opset,
    )
    text_graph = TextGraph(text.encoder.float()).eval()
    vocab = text.tokenizer.get_vocab_size()
    example_text = text_inputs(2, 8, vocab, settings.seed)
    _export(
        text_graph,
        tuple(example_text.values()),
        out / TEXT_ENCODER_FILE,
        tuple(example_text),
        ("tokens", "pooled"),
        {"ids": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"}, "tokens": {0: "batch", 1: "length"}},
        settings.opset,
    )
    # parity on other shapes than the traced ones: the dynamic axes must really be dynamic
    batch = settings.parity_batch + 1
    transformer_check = transformer_inputs(model, size, batch, 11, settings.seed + 1)
    text_check = text_inputs(batch, 13, vocab, settings.seed + 1)
    report.parity = {
        "transformer": _max_difference(open_session(out / TRANSFORMER_FILE), velocity, transformer_check),
        "text_encoder": _max_difference(open_session(out / TEXT_ENCODER_FILE), text_graph, text_check),
    }
    worst = max(report.parity, key=report.parity.get)
    if report.parity[worst] > settings.parity_limit:
        raise RuntimeError(
            f"ONNX parity failed: {worst} differs from torch by {report.parity[worst]:.2e} "
            f"(allowed {settings.parity_limit:.0e})"
        )
    text.tokenizer.save(str(out / "tokenizer.json"))
    model.config.save_json(out / "config.json", _class_name=type(model).__name__)
    pipeline.generation_config.save(out)
    report.files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    atomic_write_text(out / MANIFEST_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    return report
