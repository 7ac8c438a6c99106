"""FractalFlowPipeline: the one object a user holds (load, generate, save)."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from fractalflow.config import MAX_CALL_PIXELS, MAX_SIDE
from fractalflow.events import ProgressEvent, tensor_to_images
from fractalflow.files import atomic_path
from fractalflow.flow.jitter import GridJitter
from fractalflow.flow.refine import ProgressiveRefiner, default_scales, plan_stages, seeded_noise, starting_with
from fractalflow.flow.samplers import guided_velocity
from fractalflow.generation import GenerationConfig
from fractalflow.hub import resolve_model_folder
from fractalflow.model.adaptive import OFF, AdaptiveDepth, CacheSettings
from fractalflow.model.adaptive_policies import (
    ADAPTIVE_FILE,
    AdaptivePolicies,
    check_adaptive,
    policy_guidance,
    policy_refine_steps,
    policy_steps,
)
from fractalflow.model.conditioning import Conditioning
from fractalflow.model.text import TextEncoder
from fractalflow.model.transformer import FractalTransformer
from fractalflow.model.weights import load_model, save_model
from fractalflow.monitoring.drift import PromptDrift
from fractalflow.monitoring.hallucination import HallucinationCheck
from fractalflow.monitoring.health import image_health
from fractalflow.plugins.core import postprocess

DEFAULT_MODEL = "default"


def default_model_folder() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("fractalflow") / "weights" / DEFAULT_MODEL))


@dataclass
class GenerationResult:
    """Images in prompt order (``num_images_per_prompt`` per prompt) and how they were made."""

    images: list[Image.Image]
    metadata: dict[str, Any] = field(default_factory=dict)

    def grid(self, columns: int = 1) -> Image.Image:
        """All images in one picture, ``columns`` per row."""
        width, height = self.images[0].size
        rows = -(-len(self.images) // columns)
        sheet = Image.new(self.images[0].mode, (columns * width, rows * height), "white")
        for i, image in enumerate(self.images):
            sheet.paste(image, ((i % columns) * width, (i // columns) * height))
        return sheet


def public_name(name_or_path: str | Path) -> str:
    """How a model is named in metadata, PNGs and the API: ``default`` for the shipped model, a
    hub id as given, a local folder by its own name (its full path says where the server's
    files are)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return DEFAULT_MODEL if path.resolve() == default_model_folder().resolve() else path.resolve().name
    return str(name_or_path)


MAX_UPSCALE = 16  # nearest-neighbour enlargement of a saved PNG: 64 px -> 1024 px at most


def check_png_target(path: Path, upscale: int = 1) -> None:
    """Raise ValueError unless ``path`` can take a PNG (checked before minutes of sampling)."""
    if path.suffix.lower() != ".png":
        raise ValueError(f"output {str(path)!r} must end in .png")
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; give a file name ending in .png")
    if not path.parent.is_dir():
        raise ValueError(f"output {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"output {str(path)!r}: folder {str(path.parent)!r} is not writable")
    if not 1 <= upscale <= MAX_UPSCALE:
        raise ValueError(f"upscale={upscale} must be from 1 to {MAX_UPSCALE}")


def save_png(image: Image.Image, path: Path, metadata: dict[str, Any], upscale: int = 1) -> Path:
    """Write ``image`` as a PNG with ``metadata`` in its text chunk, atomically."""
    check_png_target(path, upscale)
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.NEAREST)
    info = PngImagePlugin.PngInfo()
    info.add_text("fractalflow", json.dumps(metadata))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


class FractalFlowPipeline:
    """Text/class to image with a FractalTransformer and a rectified-flow sampler.

    ``FractalFlowPipeline.from_pretrained(folder_or_hub_id)`` loads a model folder;
    ``FractalFlowPipeline.default()`` the one shipped in the package;
    ``generate(prompt, ...)`` returns a :class:`GenerationResult`.
    """

    def __init__(
        self,
        model: FractalTransformer,
        device: str | torch.device = "cpu",
        source: str = "",
        text_encoder: TextEncoder | None = None,
    ):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.source = source
        self._text_encoder = text_encoder
        self.adaptive_policies: AdaptivePolicies | None = None  # from the model folder's adaptive.json
        self.generation_config = GenerationConfig()  # this model's defaults (its generation_config.json)
        # when set (HallucinationCheck.shipped()), each image's health says how well it matches its prompt
        self.hallucination_check: HallucinationCheck | None = None
        self.prompt_drift: PromptDrift | None = None  # from the model folder's prompt_reference.safetensors
        self.adapter = ""  # the name of the LoRA adapter loaded into the model, if any
        self.autocast_dtype: torch.dtype | None = None  # run the network in bf16/fp16 (set by InferenceEngine)

    @property
    def text_encoder(self) -> TextEncoder:
        """The frozen text encoder named in the model's config, loaded on first use."""
        if self._text_encoder is None:
            self._text_encoder = TextEncoder.from_pretrained(self.config.text_encoder, device=self.device)
        return self._text_encoder

    @property
    def config(self):
        return self.model.config

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> FractalFlowPipeline:
        folder = resolve_model_folder(name_or_path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipeline = cls(load_model(folder, dtype=dtype, device=device), device=device, source=public_name(name_or_path))
        pipeline.adaptive_policies = AdaptivePolicies.read(folder)
        pipeline.generation_config = GenerationConfig.for_model(folder)
        pipeline.prompt_drift = PromptDrift.for_model(folder)
        return pipeline

    @classmethod
    def default(cls, device: str | torch.device | None = None) -> FractalFlowPipeline:
        return cls.from_pretrained(default_model_folder(), device=device)

    def load_adapter(self, folder: str | Path) -> None:
        """Apply the LoRA adapter in ``folder`` (``fractalflow train --lora-rank``) to this
        model; the metadata of every image then names it. One adapter per pipeline."""
        from fractalflow.training.lora import load_adapter

        if self.adapter:
            raise ValueError(f"this pipeline already has the adapter {self.adapter!r}; load the model again first")
        load_adapter(self.model, folder)
        self.model.eval()
        self.adapter = Path(folder).name

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype | None = None) -> None:
        """The model folder: weights, config.json and the generation defaults (generation_config.json)."""
        save_model(self.model, folder, dtype)
        self.generation_config.save(folder)

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Conditioning for ``prompts``: text features, or for a class-conditional model the class named in each."""
        names = self.config.class_names
        if not names:
            return self.text_encoder.encode(prompts)
        labels = []
        for prompt in prompts:
            lowered = prompt.lower()
            found = [
                i for i, name in enumerate(names) if re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", lowered)
            ]
            if not found:
                raise ValueError(f"prompt {prompt!r} names no class of this model; allowed classes: {', '.join(names)}")
            labels.append(max(found, key=lambda i: len(names[i])))
        return Conditioning(labels=torch.tensor(labels, dtype=torch.long))

    def adaptive_settings(
        self, adaptive: str | float | CacheSettings, size: int | None = None
    ) -> tuple[CacheSettings, float | None]:
        """The step-caching settings ``generate(adaptive=...)`` runs with for images of ``size``
        px (None: the model's own), and the calibrated speed-up they were chosen for (None: off,
        or settings given directly)."""
        check_adaptive(adaptive)
        if isinstance(adaptive, CacheSettings):
            return adaptive, None
        if adaptive == "off":
            return OFF, None
        if self.adaptive_policies is None:
            if adaptive == "auto":
                return OFF, None  # an uncalibrated model runs in full
            raise ValueError(
                f"adaptive={adaptive!r}: this model has no {ADAPTIVE_FILE}; run 'fractalflow calibrate' "
                "or use adaptive='off'"
            )
        return self.adaptive_policies.for_size(size or self.config.sample_size).choose(adaptive)

    def image_health(self, images: torch.Tensor, cond: Conditioning) -> list[dict]:
        """Per image: :func:`image_health`; for text models with :attr:`hallucination_check`, its
        alignment with the prompt and whether it is a probable hallucination; with
        :attr:`prompt_drift`, how far its prompt lies from the training captions."""
        reports = image_health(images)
        if cond.pooled is None:
            return reports
        if self.hallucination_check is not None:
            unit = (images.float().clamp(-1, 1) + 1) / 2  # (B, C, H, W) in [0, 1]
            reports = [{**a, **b} for a, b in zip(reports, self.hallucination_check.report(unit, cond.pooled))]
        if self.prompt_drift is not None:
            reports = [{**a, **b} for a, b in zip(reports, self.prompt_drift.report(cond.pooled))]
        return reports

    @torch.no_grad()
    def generate(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        seeds: Sequence[int] | None = None,
        callback: Callable[[ProgressEvent], None] | None = None,
        progress: bool = False,
        config: GenerationConfig | None = None,
        latents: torch.Tensor | None = None,
        **settings: Any,
    ) -> GenerationResult:
        """Generate ``num_images_per_prompt`` images for each prompt.

        How to sample is a :class:`GenerationConfig`: ``config`` (default: this model's
        ``generation_config``, from its folder) with any of its fields given as keywords over
        it, e.g. ``generate("red heart", steps=10, resolution="high", adaptive="auto")``.
        Image ``i`` draws its noise from a generator seeded with ``seed + i`` (or ``seeds[i]``),
        so an image does not depend on what else is in the batch; ``latents``
        ``(images, C, S, S)``, at the first scale's size ``S``, replace that first draw (as in
        diffusers: to start from noise made elsewhere, e.g. in the browser). ``callback`` gets a
        :class:`ProgressEvent` after every step; the metadata and the events say how many
        blocks ran (step caching, ``adaptive``).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompt must be a non-empty string or a list of non-empty strings")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt} must be >= 1")
        config = (config or self.generation_config).merged(**settings)
        native, trained = self.config.sample_size, getattr(self.config, "trained_sizes", ())  # peers record none
        if config.size is not None:
            self.model.check_size(config.size, config.size)
            scales = (config.size / native,)
        elif config.resolution is None:  # the model's own size, from the smallest size it was trained at
            scales = default_scales(native, trained or (native,))
        else:
            scales = default_scales(native, trained)
        planned = plan_stages(config.refine_settings("standard", scales), native, self.config.downsampling)
        cache, target = self.adaptive_settings(config.adaptive, planned[-1].size)
        if config.grid_jitter and cache is not OFF:  # stored features are of another offset: no caches
            cache = replace(cache, depth=0, freeze_cross=None, guidance_every=1)
        steps = policy_steps(config.steps, cache)  # the metadata keeps the config as asked
        refine_steps = policy_refine_steps(config.refine_steps, cache)
        partial = policy_guidance(config.guidance_interval, config.steps, steps, config.time_shift)
        refine = config.merged(steps=steps, refine_steps=refine_steps).refine_settings("standard", scales)
        refiner = ProgressiveRefiner(refine, native, self.config.downsampling)
        count, final = len(prompts) * num_images_per_prompt, refiner.stages[-1].size
        if final > MAX_SIDE:
            raise ValueError(f"{final} px is over the largest image side allowed, {MAX_SIDE} px")
        if count * final**2 > MAX_CALL_PIXELS:
            raise ValueError(
                f"{count} images of {final} px are too many for one call: at most {MAX_CALL_PIXELS // final**2}"
            )
        if seeds is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
            seeds = [seed + i for i in range(count)]
        elif len(seeds) != count:
            raise ValueError(f"{len(seeds)} seeds given for {count} images: give one seed per image")
        seeds = [int(s) for s in seeds]
        if latents is not None:
            start = refiner.stages[0].size
            expected = (count, self.config.in_channels, start, start)
            if tuple(latents.shape) != expected or not latents.is_floating_point():
                raise ValueError(f"latents of shape {tuple(latents.shape)}: this call starts from {expected} floats")

        started = time.perf_counter()
        cond = self.encode_prompts(prompts).repeat(num_images_per_prompt).to(self.device)
        noise = seeded_noise(seeds, self.config.in_channels, self.device)
        if latents is not None:
            noise = starting_with(latents.to(self.device, torch.float32), noise)
        bar = tqdm(total=refiner.total_steps, desc="generate", unit="step", disable=not progress)

        def on_event(event: ProgressEvent) -> None:
            bar.update(1)
            if callback is not None:
                callback(replace(event, blocks_run=caching.report()["blocks_run"]))

        dtype = self.autocast_dtype
        with (
            torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            warnings.catch_warnings(),
            AdaptiveDepth(self.model, cache) as caching,
        ):
            # under autocast nn.RMSNorm meets bf16 inputs with fp32 weights and takes its unfused path
            warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
            # a preview is a copy to the CPU every step (a device sync on a GPU): only when someone listens
            listener = on_event if callback is not None or progress else None
            velocity = guided_velocity(self.model, cond, config.guidance, config.guidance_interval, partial)
            if config.grid_jitter:
                velocity = GridJitter(velocity, config.grid_jitter)
            sampled, report = refiner.run(velocity, noise, listener, caching.exact_since_last_asked)
        images = postprocess(sampled, config.postprocess)
        bar.close()
        metadata = {
            "prompts": prompts,
            "seeds": seeds,
            "config": config.describe(),
            "size": report.stages[-1].size,
            "stages": [
                {"size": stage.size, "start": stage.start, "steps": stage.steps, "steps_run": ran}
                for stage, ran in zip(report.stages, report.steps_run)
            ],
            "adaptive": {
                "asked": config.describe()["adaptive"],
                "target": target,
                "settings": None if cache is OFF else cache.to_dict(),
                "partial_guidance": None if partial is None else list(partial),  # (t, share): see policy_guidance
                **caching.report(),
                "by_size": caching.report_by_size(),
            },
            "health": self.image_health(sampled, cond),  # what the model drew, before postprocessors
            "seconds": time.perf_counter() - started,
            "model": self.source,
            "adapter": self.adapter or None,
        }
        return GenerationResult(tensor_to_images(images.cpu()), metadata)
