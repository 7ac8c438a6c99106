"""Dataclass configs shared by the package, saved and loaded as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fractalflow.files import atomic_write_text

ConfigT = TypeVar("ConfigT", bound="JsonConfig")


def matches_type(value: Any, hint: Any) -> bool:
    """Whether a JSON-loaded ``value`` (lists already tuples) fits a config field's type
    (int, float, bool, str, ``X | None``, ``tuple[X, ...]``, dict, Any)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(items) == len(value) and all(matches_type(item, arg) for item, arg in zip(value, items))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if not typing.get_args(hint) else str(hint).replace("typing.", "")


def check_ranges(owner: str, checks: list[tuple[str, Any, str, bool]]) -> None:
    """One ValueError naming every ``(field, value, rule, ok)`` of ``checks`` that is not ok."""
    problems = [f"{name}={value} must be {rule}" for name, value, rule, ok in checks if not ok]
    if problems:
        raise ValueError(f"invalid {owner}: " + "; ".join(problems))


class JsonConfig:
    """Mixin for dataclass configs: strict JSON round-trip with clear errors for unknown keys
    and for values of the wrong type."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(k for k in values if k not in known and not k.startswith("_"))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; allowed fields are {sorted(known)}")
        hints = typing.get_type_hints(cls)
        kwargs, wrong = {}, []
        for name, value in values.items():
            if name not in known:
                continue
            if isinstance(value, list):
                value = tuple(value)
            if not matches_type(value, hints[name]):
                wrong.append(f"{name}={json.dumps(value)} (expected {type_name(hints[name])})")
            kwargs[name] = value
        if wrong:
            raise ValueError(f"{cls.__name__}: wrong type for " + ", ".join(wrong))
        return cls(**kwargs)

    def save_json(self, path: str | Path, **extra: Any) -> None:
        payload = {**extra, **self.to_dict()}
        atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load_json(cls: type[ConfigT], path: str | Path) -> ConfigT:
        return cls.from_dict(read_json_object(path))


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``, or a one-line ValueError naming the file and the problem."""
    try:
        values = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not JSON text: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object of settings, not a {type(values).__name__}")
    return values


MAX_GUIDANCE = 100.0  # the largest classifier-free guidance scale accepted (as ComfyUI's cfg)
# limits of one FractalFlowPipeline.generate call (the server has its own, lower, in ServerConfig)
MAX_STEPS = 1000  # sampling steps (ComfyUI's KSampler allows 10000; flow models need 10-50)
MAX_TIME_SHIFT = 20.0  # SD3 samples at 3; past 20 nearly every step sits at t > 0.9
MAX_SIDE = 2048  # pixels per image side, 32x the default model's trained size
MAX_CALL_PIXELS = 2**22  # images x pixels in one call: 1024 images of 64 px, 4 of 1024 px

# the block designs a FractalConfig can choose (benchmarks/ablate.py compares them)
CHOICES = {
    "modulation": ("adaln-zero", "adarmsnorm"),
    "attention_norm": ("qk-rmsnorm", "cosine"),
    "feed_forward": ("geglu", "gelu"),
    "prediction": ("velocity", "x0"),
    "split_mixing": ("none", "depthwise-conv"),
    "token_split": ("block", "bilinear"),
}


@dataclass(frozen=True)
class FractalConfig(JsonConfig):
    """Shape of a FractalTransformer.

    Level i works on tokens of width ``widths[i]``; every level but the last runs
    ``depths[i]`` blocks before and ``depths[i]`` blocks after its inner level (tokens
    merged ``merge_factor``×``merge_factor``), the last runs ``depths[-1]`` blocks with
    global attention. Images must have sides divisible by ``downsampling``.

    Block design: ``modulation`` adaLN-Zero (DiT: shift, scale and gate per sub-layer from the
    time/condition vector) or AdaRMSNorm (HDiT: a scale only); ``attention_norm`` RMS-normalised
    q and k or cosine similarity with a learned per-head scale; ``feed_forward`` GEGLU or a GELU
    MLP of equal size; ``prediction`` the velocity, or the clean image from which the velocity
    is computed (Li & He 2025), the loss staying on the velocity either way.
    """

    in_channels: int = 3
    patch_size: int = 2
    widths: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 4)
    head_dim: int = 32
    window: int = 8
    merge_factor: int = 2
    mlp_ratio: float = 3.0
    mapping_width: int = 256
    cond_dim: int = 384
    cross_attention_levels: int = 1
    class_names: tuple[str, ...] = ()
    sample_size: int = 32
    # image sizes the model was trained at (written at export; () = unknown): coarse-to-fine
    # sampling starts no smaller than the smallest, which the model has seen
    trained_sizes: tuple[int, ...] = ()
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    # block design (model folders without these fields are the first design: the defaults)
    modulation: str = "adaln-zero"
    attention_norm: str = "qk-rmsnorm"
    feed_forward: str = "geglu"
    prediction: str = "velocity"
    # after each TokenSplit: nothing, or a zero-initialised residual 3x3 depthwise convolution
    # that lets a token see its neighbours across the border of the coarser token it came from
    split_mixing: str = "none"
    # how a TokenSplit places its projections: each child takes its own parent's ("block"), or
    # the bilinear blend of the neighbouring parents' projections for its sub-position
    # ("bilinear": the same weights, no step at the parent's border)
    token_split: str = "block"

    def __post_init__(self) -> None:
        problems = []
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} (allowed: {', '.join(allowed)})")
        if len(self.widths) != len(self.depths) or not self.widths:
            problems.append(f"widths {self.widths} and depths {self.depths} need the same, non-zero length")
        if any(w % self.head_dim for w in self.widths):
            problems.append(f"every width in {self.widths} must be a multiple of head_dim={self.head_dim}")
        if self.head_dim % 4:
            problems.append(f"head_dim={self.head_dim} must be a multiple of 4 (2-D rotary positions)")
        if self.patch_size < 1 or self.merge_factor < 2 or self.window < 1:
            problems.append("patch_size >= 1, merge_factor >= 2 and window >= 1 are required")
        if any(size < 1 for size in self.trained_sizes):
            problems.append(f"trained_sizes={self.trained_sizes} must be positive sizes in pixels")
        if not 0 <= self.cross_attention_levels <= len(self.widths):
            problems.append(f"cross_attention_levels must be in 0..{len(self.widths)}")
        if problems:
            raise ValueError("invalid FractalConfig: " + "; ".join(problems))

    @property
    def num_levels(self) -> int:
        return len(self.widths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_class_conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def downsampling(self) -> int:
        """Pixels per token side at the coarsest level: image sides must be multiples of it."""
        return self.patch_size * self.merge_factor ** (self.num_levels - 1)

    def check_size(self, height: int, width: int) -> None:
        """A one-line ValueError unless both sides are positive multiples of ``downsampling``."""
        step = self.downsampling
        if height % step or width % step or height < step or width < step:
            raise ValueError(
                f"image size {height}x{width} is not allowed: both sides must be positive multiples "
                f"of {step} (patch {self.patch_size} x merge {self.merge_factor}^{self.num_levels - 1})"
            )

    def uses_cross_attention(self, level: int) -> bool:
        if self.is_class_conditional:
            return False
        return level >= self.num_levels - self.cross_attention_levels


# the block design the presets use: AdaRMSNorm won the ablation (benchmarks/ablate.py,
# docs/benchmarks.md); the FractalConfig defaults stay the first design so older folders load
PRESET_DESIGN: dict[str, Any] = dict(modulation="adarmsnorm")
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=2, widths=(32, 64), depths=(1, 2), head_dim=16, window=4, mapping_width=64),
    "small": dict(patch_size=2, widths=(64, 128, 256), depths=(1, 1, 4), head_dim=32, window=8),
    "base": dict(patch_size=2, widths=(128, 256, 512), depths=(2, 2, 8), head_dim=64, window=8, mapping_width=512),
}


# what the default text-to-image model (scripts/train_default.py, scripts/gpu_train.py) adds
# to a preset: RGB, MiniLM's 384-d text, cross-attention at the coarsest level, 64 px, and
# patch 4: at equal CPU minutes it recognised concepts better than patch 2 on the peers
# benchmark (top-5 2.1x, recall 1.4x at 32 px) and samples 2.6x faster
DEFAULT_MODEL_SHAPE: dict[str, Any] = dict(
    in_channels=3, cond_dim=384, cross_attention_levels=1, sample_size=64, patch_size=4
)


def model_preset(name: str, **overrides: Any) -> FractalConfig:
    """A named size preset (``tiny``, ``small``, ``base``) in the preset block design, with
    fields overridden."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return FractalConfig.from_dict({**PRESET_DESIGN, **MODEL_PRESETS[name], **overrides})


@dataclass
class TrainConfig(JsonConfig):
    """Settings of one training run (the CLI exposes each field as an option)."""

    steps: int = 2000
    batch_size: int = 64
    image_size: int = 32
    resolutions: tuple[int, ...] = ()
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_drop_prob: float = 0.1
    timestep_mean: float = 0.0
    timestep_std: float = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "auto"
    # stages by resolution, timestep emphasis and data, e.g. "32:0.4,64:0.4,64+128:0.2"
    # (training/curriculum.py); "" trains with ``resolutions`` throughout
    curriculum: str = ""
    curriculum_pacing: str = "fixed"
    # export the EMA model to out_dir/snapshots/<M>min once training has run M minutes (summed
    # over resumed runs), to measure quality against wall-clock
    snapshot_minutes: tuple[int, ...] = ()
    # start from this model folder's weights ("default": the shipped model) instead of afresh
    init: str = ""
    # > 0: train only LoRA adapters of this rank on the attention and MLP linears (exported as an adapter folder)
    lora_rank: int = 0
    # learning rate of layers the init folder lacks (added zero-initialised, e.g. split mixing),
    # as a multiple of learning_rate: a zero-initialised layer learns slowly at a fine-tune's rate
    added_layers_lr_scale: float = 1.0
    # > 0: move each training image by up to this many pixels, so the network does not tie the
    # picture to its token grid and can be sampled with grid_jitter (flow/jitter.py)
    shift_augment: int = 0
    # what fills the rows a move opens: None mirrors the image's edge; a value in [-1, 1] fills
    # with it (1.0: white, the background of every emoji and icon, where a mirror would copy a
    # shape that touches the frame)
    shift_fill: float | None = None

    def __post_init__(self) -> None:
        if self.curriculum_pacing not in ("fixed", "plateau"):
            raise ValueError(f"curriculum_pacing={self.curriculum_pacing!r}; allowed: 'fixed', 'plateau'")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps ({self.steps}) and batch_size ({self.batch_size}) must be >= 1")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; allowed: 'auto', 'no', 'bf16'")
        if any(minutes < 1 for minutes in self.snapshot_minutes):
            raise ValueError(f"snapshot_minutes={self.snapshot_minutes} must be positive whole minutes")
        if any(size < 1 for size in self.resolutions):
            raise ValueError(f"resolutions={self.resolutions} must be positive sizes in pixels")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob={self.cond_drop_prob} must be in [0, 1)")
        check_ranges(
            "TrainConfig",
            [
                ("image_size", self.image_size, ">= 1", self.image_size >= 1),
                ("learning_rate", self.learning_rate, "a finite number > 0", 0 < self.learning_rate < math.inf),
                (
                    "added_layers_lr_scale",
                    self.added_layers_lr_scale,
                    "in (0, 1000]",
                    0 < self.added_layers_lr_scale <= 1000,
                ),
                ("weight_decay", self.weight_decay, "a finite number >= 0", 0 <= self.weight_decay < math.inf),
                ("grad_clip", self.grad_clip, "a finite number >= 0 (0 = off)", 0 <= self.grad_clip < math.inf),
                ("ema_decay", self.ema_decay, "in [0, 1)", 0 <= self.ema_decay < 1),
                ("timestep_mean", self.timestep_mean, "finite", math.isfinite(self.timestep_mean)),
                ("timestep_std", self.timestep_std, "a finite number > 0", 0 < self.timestep_std < math.inf),
                ("warmup_steps", self.warmup_steps, ">= 0", self.warmup_steps >= 0),
                ("checkpoint_every", self.checkpoint_every, ">= 0 (0 = never)", self.checkpoint_every >= 0),
                ("keep_checkpoints", self.keep_checkpoints, ">= 1", self.keep_checkpoints >= 1),
                ("sample_every", self.sample_every, ">= 0 (0 = never)", self.sample_every >= 0),
                ("log_every", self.log_every, ">= 1", self.log_every >= 1),
                ("lora_rank", self.lora_rank, "from 0 (off) to 256", 0 <= self.lora_rank <= 256),
                ("shift_augment", self.shift_augment, "from 0 (off) to 16", 0 <= self.shift_augment <= 16),
                (
                    "shift_fill",
                    self.shift_fill,
                    "from -1 to 1, or None (mirror)",
                    self.shift_fill is None or -1 <= self.shift_fill <= 1,
                ),
            ],
        )
