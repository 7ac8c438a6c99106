"""``evaluate``: generate for held-out captions with fixed seeds and measure the result.

Image ``i`` is drawn for the caption of held-out image ``rows[i]`` with seed ``seed + i``
(:func:`eval_rows`: every held-out image in turn, or an even spread of them when fewer images
are asked for than there are), so the same settings give the same images, whatever the batch
size, on the same machine.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fractalflow.config import JsonConfig, check_ranges
from fractalflow.data.dataset import CaptionedImages
from fractalflow.data.emoji import EmojiDataset
from fractalflow.evaluation.alignment import (
    AlignmentEncoder,
    alignment_scores,
    caption_index,
    image_embeddings,
    ranks_of_own_captions,
)
from fractalflow.evaluation.classifier import ImageClassifier
from fractalflow.evaluation.concepts import ConceptGallery, concept_retrieval, is_emoji_concept
from fractalflow.evaluation.features import EffNetFeatures
from fractalflow.evaluation.frechet import frechet_distance_of_features, frechet_distance_resampled
from fractalflow.evaluation.manifold import precision_recall
from fractalflow.events import images_to_tensor
from fractalflow.flow.refine import resolution_size
from fractalflow.generation import GenerationConfig
from fractalflow.hardware import describe_device
from fractalflow.pipeline import FractalFlowPipeline

MAX_EVAL_IMAGES = 50_000  # FID-50k, the field's largest customary sample


@dataclass(frozen=True)
class EvalSettings(JsonConfig):
    """What ``fractalflow eval`` generates and how it measures (saved with every result):
    ``num_images`` images with seeds from ``seed``, sampled as ``generation`` says, in batches
    of ``batch_size``; features at ``feature_size`` px, k-NN precision/recall with
    ``nearest_neighbours``; ``fd_resamples`` bootstrap resamples of the generated images'
    features give the FD's spread (``fd_resampled``, for ``fractalflow history check``)."""

    num_images: int = 2000
    seed: int = 0
    batch_size: int = 32
    feature_size: int = 128
    nearest_neighbours: int = 3
    fd_resamples: int = 20
    generation: GenerationConfig = GenerationConfig()

    def __post_init__(self) -> None:
        if self.num_images < 2 or self.batch_size < 1:
            raise ValueError(f"num_images ({self.num_images}) must be >= 2 and batch_size ({self.batch_size}) >= 1")
        check_ranges(
            "EvalSettings",
            [
                ("num_images", self.num_images, f"at most {MAX_EVAL_IMAGES}", self.num_images <= MAX_EVAL_IMAGES),
                ("fd_resamples", self.fd_resamples, "from 0 to 1000", 0 <= self.fd_resamples <= 1000),
            ],
        )

    def output_size(self, native_size: int, multiple: int) -> int:
        """Side in pixels of the generated images for a model trained at ``native_size``."""
        generation = self.generation
        return resolution_size(generation.resolution or generation.size or native_size, native_size, multiple)


PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the weights (names, dtypes, bytes in name order): which model a number belongs to.

    Quantized layers keep packed (weight, bias) tuples in their state: their int8 values
    and scales are hashed, so an int8 model has its own fingerprint."""
    digest = hashlib.sha256()

    def add(name: str, value: object) -> None:
        if isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                add(f"{name}.{i}", item)
        elif isinstance(value, Tensor) and value.is_quantized:
            add(f"{name}.int", value.int_repr())
            add(f"{name}.scale", value.q_per_channel_scales() if value.qscheme() in PER_CHANNEL else value.q_scale())
        elif isinstance(value, Tensor):
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{name}:{value!r}".encode())

    for name, value in sorted(model.state_dict().items()):
        add(name, value)
    return digest.hexdigest()


def concept_gallery(images: EmojiDataset, features: EffNetFeatures, size: int) -> ConceptGallery:
    """EfficientNet-Lite0 features of every image of ``images`` at ``size``, with concepts and styles."""
    pixels = images.pixels(torch.arange(len(images)), size).add(1).div(2)  # [-1, 1] -> [0, 1]
    return ConceptGallery.of(images, features.features(pixels.split(128)))


def eval_rows(count: int, held_out: int) -> list[int]:
    """Which held-out image each of ``count`` generated images is drawn for: ``i mod N`` when
    ``count >= N``, else ``count`` rows spread evenly over the set (whose sources are stored
    one after another, so a prefix would cover only the first sources)."""
    if count >= held_out:
        return [i % held_out for i in range(count)]
    return [i * held_out // count for i in range(count)]


def generate_for_captions(
    pipeline: FractalFlowPipeline, prompts: list[str], settings: EvalSettings, progress: bool = True
) -> Tensor:
    """uint8 ``(N, C, H, W)`` images, image ``i`` for ``prompts[i]`` with seed ``settings.seed + i``."""
    images = []
    bar = tqdm(total=len(prompts), desc="generate", unit="image", disable=not progress)
    for start in range(0, len(prompts), settings.batch_size):
        chunk = prompts[start : start + settings.batch_size]
        result = pipeline.generate(chunk, seed=settings.seed + start, config=settings.generation)
        images.append(images_to_tensor(result.images))
        bar.update(len(chunk))
    bar.close()
    return torch.cat(images)


def nearest_distances(points, references) -> list[float]:
    """For each of ``points`` (N, D), the distance to its nearest of ``references`` (M, D)."""
    points, references = torch.as_tensor(points).double(), torch.as_tensor(references).double()
    return torch.cat([torch.cdist(chunk, references).min(dim=1).values for chunk in points.split(1024)]).tolist()


def evaluate(
    pipeline: FractalFlowPipeline,
    held_out: CaptionedImages,
    settings: EvalSettings,
    alignment: AlignmentEncoder | None = None,
    classifier: ImageClassifier | None = None,
    progress: bool = True,
    gallery: EmojiDataset | ConceptGallery | None = None,
    images: Tensor | None = None,
) -> dict:
    """Generate ``settings.num_images`` images for the held-out captions and measure
    FD-EffNetL0 and precision/recall against the held-out images, plus prompt alignment
    (text models, with ``alignment``) or classifier accuracy (class models, with ``classifier``).
    With ``gallery`` (the real images of the held-out emoji concepts, every split and style,
    or their :class:`ConceptGallery` from :func:`concept_gallery`), concept retrieval too
    (:mod:`fractalflow.evaluation.concepts`). ``images``: the images these settings generate,
    made before (to measure one set with several encoders); then nothing is drawn.
    Metrics of the real held-out images under the same encoders are reported as ceilings.
    ``per_image`` holds each image's distance to its nearest real image in the FD features
    and (with ``alignment``) the cosine between it and its caption: values that two runs with
    the same seeds pair image by image (:func:`~fractalflow.monitoring.selfopt.check_regression`),
    and its own caption's rank among the held-out captions (0: first; top-5 counts ranks below
    5), which benchmarks pair to measure a change of top-5 with its standard error."""
    started = time.perf_counter()
    count = settings.num_images
    order = eval_rows(count, len(held_out))
    prompts = [held_out.captions[i] for i in order]
    size = settings.output_size(pipeline.config.sample_size, pipeline.config.downsampling)
    real_count = min(count, len(held_out))
    real_rows = order[:real_count]
    real = torch.round((held_out.pixels(torch.tensor(real_rows), size) + 1) * 127.5).clamp(0, 255).byte()

    generation_started = time.perf_counter()
    fake = generate_for_captions(pipeline, prompts, settings, progress) if images is None else images
    generation_seconds = time.perf_counter() - generation_started
    if len(fake) != count:
        raise ValueError(f"{len(fake)} images given for num_images={count}")

    real_unit, fake_unit = real.float() / 255.0, fake.float() / 255.0
    features = EffNetFeatures(size=settings.feature_size)
    real_features = features.features(real_unit.split(128))
    fake_features = features.features(fake_unit.split(128))
    precision, recall = precision_recall(real_features, fake_features, k=settings.nearest_neighbours)
    metrics: dict[str, float] = {
        "fd_effnet_l0": frechet_distance_of_features(real_features, fake_features),
        "precision": precision,
        "recall": recall,
    }
    fd_resampled = frechet_distance_resampled(real_features, fake_features, settings.fd_resamples, settings.seed)
    per_image = {"nearest_real_distance": nearest_distances(fake_features, real_features)}
    ceilings: dict[str, float] = {}
    if alignment is not None:
        distinct, own = caption_index(held_out.captions)
        captions = alignment.embed_texts(pipeline.text_encoder.encode(distinct).pooled)
        real_embedded, fake_embedded = image_embeddings(alignment, real_unit), image_embeddings(alignment, fake_unit)
        ranks = ranks_of_own_captions(fake_embedded, own[order], captions)
        generated = alignment_scores(ranks)
        per_image["alignment_cosine"] = (fake_embedded * captions[own[order]]).sum(dim=1).tolist()
        per_image["alignment_rank"] = ranks.tolist()
        real_scores = alignment_scores(ranks_of_own_captions(real_embedded, own[real_rows], captions))
        metrics.update(
            alignment_top1=generated["top1"],
            alignment_top5=generated["top5"],
            hallucination_rate=generated["hallucination_rate"],
        )
        ceilings.update(alignment_top1=real_scores["top1"], alignment_top5=real_scores["top5"])
        metrics["fd_alignment"] = frechet_distance_of_features(
            real_embedded.double().numpy(), fake_embedded.double().numpy()
        )
        metrics["distinct_captions"] = len(distinct)
    if gallery is not None:
        if not isinstance(held_out, EmojiDataset):
            raise ValueError("concept retrieval needs an emoji held-out set (with records)")
        library = gallery if isinstance(gallery, ConceptGallery) else concept_gallery(gallery, features, size)
        asked = [(i, held_out.records[k]) for i, k in enumerate(order) if is_emoji_concept(held_out.records[k])]
        shown = [(i, held_out.records[k]) for i, k in enumerate(real_rows) if is_emoji_concept(held_out.records[k])]
        generated = concept_retrieval(fake_features[[i for i, _ in asked]], [r for _, r in asked], library)
        real_scores = concept_retrieval(real_features[[i for i, _ in shown]], [r for _, r in shown], library)
        metrics.update(concept_retrieval=generated["concept_retrieval"], concept_chance=generated["chance"])
        metrics["concept_queries"] = generated["queries"]
        ceilings["concept_retrieval"] = real_scores["concept_retrieval"]
    if classifier is not None:
        if held_out.labels is None:
            raise ValueError("classifier accuracy needs a class-labelled held-out set")
        wanted = held_out.labels[order]
        metrics["classifier_accuracy"] = (classifier.predict(fake_unit) == wanted).double().mean().item()
        ceilings["classifier_accuracy"] = (
            (classifier.predict(real_unit) == held_out.labels[real_rows]).double().mean().item()
        )
    total = time.perf_counter() - started
    return {
        "model": pipeline.source,
        "model_sha256": model_fingerprint(pipeline.model),
        "parameters": sum(p.numel() for p in pipeline.model.parameters()),
        "settings": settings.to_dict(),
        "size": size,
        "real_images": real_count,
        "metrics": metrics,
        "fd_resampled": fd_resampled,
        "per_image": per_image,
        "real_held_out": ceilings,
        "seconds_per_image": generation_seconds / count,
        "seconds_total": total,
        "hardware": describe_device(pipeline.device),
        "torch": torch.__version__,
    }
