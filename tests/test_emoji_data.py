"""The emoji and icon set: one CLDR name per code point, sources, budget, sampling weights,
credits, split rule, preparation from (fake) npm packages, and the real packages."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fractalflow.data import load_dataset
from fractalflow.data.credits import source_credits
from fractalflow.data.emoji import (
    downsample,
    find_sources,
    is_eval,
    load_emoji,
    prepare,
    select,
    source_weights,
)
from fractalflow.data.emoji_names import EmojiNames, codepoint_key
from fractalflow.data.emoji_sources import SOURCES, EmojiRecord, source

SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
    '<rect x="4" y="4" width="16" height="16" fill="{}"/></svg>'
)
NODE_MODULES = Path(__file__).resolve().parents[1] / "data" / "node_modules"
RED_HEART = "2764"


def test_split_rule_is_sha1_mod_20_deterministic_and_about_five_percent():
    keys = [f"{i:05x}" for i in range(4000)]
    held_out = [k for k in keys if is_eval("openmoji", k)]
    assert held_out == [k for k in keys if int(hashlib.sha1(f"openmoji:{k}".encode()).hexdigest(), 16) % 20 == 0]
    assert 0.04 < len(held_out) / len(keys) < 0.06
    assert {k for k in keys if is_eval("noto", k)} != set(held_out)  # the source is part of the key


def test_code_point_keys_ignore_case_the_variation_selector_and_separators():
    assert codepoint_key("2764-FE0F") == codepoint_key("2764") == codepoint_key("2764_fe0f") == "2764"
    assert codepoint_key("1F441-FE0F-200D-1F5E8-FE0F") == "1f441-200d-1f5e8"
    assert codepoint_key("0023-fe0f-20e3") == codepoint_key("23-20E3") == "0023-20e3"


def test_captions_name_style_and_a_random_subset_of_tags():
    emoji = EmojiRecord(
        "openmoji", "1f600", "grinning face", ["happy", "smile", "grin", "face"], style="openmoji style"
    )
    icon = EmojiRecord("tabler", "bell-outline", "bell", ["notification", "alarm"], kind="icon", style="tabler style")
    assert emoji.caption() == "grinning face, openmoji style"
    assert icon.caption() == "bell icon, tabler style"
    rng = random.Random(0)
    for _ in range(50):
        parts = emoji.caption(rng).split(", ")
        assert parts[0] == "grinning face"
        tags = [p for p in parts[1:] if p != "openmoji style"]
        assert len(tags) <= 3 and set(tags) <= {"happy", "smile", "grin"}  # "face" is already in the name
        assert icon.caption(rng).startswith("bell icon")
    assert len({emoji.caption(rng) for _ in range(50)}) > 5
    assert {emoji.caption(rng).startswith("grinning face, openmoji style") for _ in range(50)} == {True, False}


def test_monochrome_emoji_styles_always_name_their_style_so_a_bare_name_means_colour():
    outline = EmojiRecord("openmoji-outline", "2764", "red heart", ["love"], style="openmoji outline style")
    colour = EmojiRecord("openmoji", "2764", "red heart", ["love"], style="openmoji style")
    rng = random.Random(0)
    assert all(outline.caption(rng).startswith("red heart, openmoji outline style") for _ in range(200))
    assert not all(colour.caption(rng).startswith("red heart, openmoji style") for _ in range(200))
    assert {s.name for s in SOURCES if s.monochrome} == {
        "openmoji-outline",
        "fluent-high-contrast",
        "emojione-monotone",
        "noto-mono",
    }


def fake_emojibase(root):
    """A two-emoji emojibase-data: CLDR names, keywords, the old Unicode names and shortcodes."""
    base = root / "emojibase-data"
    (base / "meta").mkdir(parents=True)
    (base / "en" / "shortcodes").mkdir(parents=True)
    (base / "meta" / "groups.json").write_text(json.dumps({"groups": {"0": "smileys-emotion"}}))
    (base / "meta" / "unicode-names.json").write_text(
        json.dumps({"1F600": "GRINNING FACE", "2764": "HEAVY BLACK HEART"})
    )
    (base / "en" / "shortcodes" / "iamcal.json").write_text(json.dumps({"1F600": "grinning", "2764": "heart"}))
    entries = [
        {"label": "grinning face", "hexcode": "1F600", "tags": ["face", "grin"], "group": 0},
        {"label": "red heart", "hexcode": "2764", "tags": ["heart", "love", "red"], "group": 0},
        {"label": "regional indicator A", "hexcode": "1F1E6"},  # no group: a component, left out
    ]
    (base / "en" / "data.json").write_text(json.dumps(entries))


def fake_node_modules(root):
    """emojibase-data, a Noto emoji-datasource with the old names, an Iconify emoji set matched
    by name (with a skin-tone variant), and one Tabler icon plus a brand icon."""
    fake_emojibase(root)
    google = root / "emoji-datasource-google"
    (google / "img" / "google" / "64").mkdir(parents=True)
    entries = []
    for code, name, colour in (
        ("1f600", "GRINNING FACE", (250, 200, 0, 255)),
        ("2764-fe0f", "HEAVY BLACK HEART", (220, 0, 0, 255)),
    ):
        Image.new("RGBA", (64, 64), colour).save(google / "img" / "google" / "64" / f"{code}.png")
        entries.append({"unified": code.upper(), "image": f"{code}.png", "name": name, "short_names": [code]})
    (google / "emoji.json").write_text(json.dumps(entries))
    blob = root / "@iconify-json" / "noto-v1"
    blob.mkdir(parents=True)
    body = '<rect width="16" height="16" fill="red"/>'
    icons = {
        "heavy-black-heart": {"body": body},
        "grinning-face-dark-skin-tone": {"body": body},
        "unknown-x": {"body": body},
    }
    (blob / "icons.json").write_text(json.dumps({"prefix": "noto-v1", "icons": icons, "width": 16, "height": 16}))
    (blob / "package.json").write_text(
        json.dumps({"name": "@iconify-json/noto-v1", "version": "1.0.0", "license": "Apache-2.0"})
    )
    (blob / "info.json").write_text(
        json.dumps({"name": "Noto Emoji (v1)", "license": {"spdx": "Apache-2.0"}, "author": {"name": "Google"}})
    )
    tabler = root / "@tabler" / "icons"
    (tabler / "icons" / "outline").mkdir(parents=True)
    (tabler / "icons" / "outline" / "bell.svg").write_text(SVG.format("black"))
    (tabler / "icons" / "outline" / "brand-github.svg").write_text(SVG.format("black"))
    (tabler / "icons.json").write_text(
        json.dumps(
            {
                "bell": {"name": "bell", "category": "System", "tags": ["alarm"], "styles": {"outline": {}}},
                "brand-github": {"name": "brand-github", "category": "Brand", "tags": [], "styles": {"outline": {}}},
            }
        )
    )
    for folder, licence in ((google, "MIT"), (tabler, "MIT")):
        (folder / "package.json").write_text(json.dumps({"name": folder.name, "version": "1.0.0", "license": licence}))
    (root / "emojibase-data" / "package.json").write_text(json.dumps({"name": "emojibase-data", "license": "MIT"}))
    return root


def test_every_source_names_an_emoji_by_the_cldr_name_of_its_code_points(tmp_path):
    found, _ = find_sources(fake_node_modules(tmp_path / "nm"))
    hearts = [r for records in found.values() for r in records if r.concept == RED_HEART]
    assert {r.source for r in hearts} == {"noto", "noto-blob"}  # the datasource by code point, Iconify by old name
    for heart in hearts:
        assert heart.name == "red heart" and heart.tags == ["heart", "love", "red"]  # CLDR keywords
        assert "heavy black heart" in heart.aliases
    assert [r.key for r in found["noto-blob"]] == [RED_HEART]  # skin tones and unknown names left out
    assert [r.name for r in found["tabler"]] == ["bell"]  # brand icons left out


def test_prepare_skips_missing_sources_with_a_message_and_builds_the_rest(tmp_path):
    summary = prepare(fake_node_modules(tmp_path / "node_modules"), tmp_path / "out", sizes=(16, 32), workers=1)
    assert "emoji-datasource-twitter" in summary["missing"]["twemoji"]
    assert set(summary["missing"]) == {s.name for s in SOURCES} - {"noto", "noto-blob", "tabler"}
    assert {s: c["train"] + c["eval"] for s, c in summary["counts"].items()} == {"noto": 2, "noto-blob": 1, "tabler": 1}
    data = load_emoji(tmp_path / "out", image_size=16, split="all")
    assert data.images.shape == (4, 3, 16, 16) and data.other_sizes[32].shape == (4, 3, 32, 32)
    assert sorted(data.captions) == [
        "bell icon, tabler style",
        "grinning face, noto style",
        "red heart, noto blob style",
        "red heart, noto style",
    ]
    assert data.images[data.captions.index("grinning face, noto style"), :, 8, 8].tolist() == [250, 200, 0]
    bell = data.captions.index("bell icon, tabler style")
    assert data.images[bell, :, 0, 0].tolist() == [255, 255, 255]  # transparent corner -> white
    torch.testing.assert_close(data.pixels(torch.tensor([0]), 32), data.other_sizes[32][:1].float() / 127.5 - 1)
    assert load_dataset(str(tmp_path / "out"), 16, split="all").captions == data.captions
    assert "Apache-2.0" in (tmp_path / "out" / "CREDITS.md").read_text()


def test_prepare_with_no_source_at_all_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="emojibase-data"):
        prepare(tmp_path, tmp_path / "out")
    fake_emojibase(tmp_path)
    with pytest.raises(FileNotFoundError, match="no data source found"):
        prepare(tmp_path, tmp_path / "out")


def test_records_follow_the_split_rule(tmp_path):
    prepare(fake_node_modules(tmp_path / "nm"), tmp_path / "out", sizes=(16,), workers=1)
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    for record in records:
        assert record["split"] == ("eval" if is_eval(record["source"], record["key"]) else "train")
    assert np.load(tmp_path / "out" / "images-16.npy").dtype == np.uint8


def test_smaller_sizes_are_block_means_of_the_largest_render():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    small = downsample(images, 4)
    assert small.shape == (3, 4, 4, 3)
    assert small[1, 2, 3, 0] == round(images[1, 4:6, 6:8, 0].astype(float).mean() + 1e-9)
    assert downsample(images, 8) is images
    with pytest.raises(ValueError, match="divide"):
        downsample(images, 3)


def records(source_name, count):
    return [EmojiRecord(source_name, f"{source_name}-{i}", f"n{i}") for i in range(count)]


def test_budget_caps_sources_then_cuts_the_largest_first_keeping_a_subset_of_a_larger_budget():
    found = {"noto": records("noto", 50), "material": records("material", 500), "lucide": records("lucide", 200)}
    capped = select(found, None, {"material": 300})
    assert {k: len(v) for k, v in capped.items()} == {"noto": 50, "material": 300, "lucide": 200}
    cut = select(found, 350, {"material": 300})
    assert {k: len(v) for k, v in cut.items()} == {"noto": 50, "material": 150, "lucide": 150}
    smaller = select(found, 200, {"material": 300})
    assert {r.key for r in smaller["material"]} <= {r.key for r in cut["material"]}


def test_sampling_weights_give_each_kind_its_share_and_small_styles_more_per_image():
    weights = source_weights(
        {"noto": 100, "streamline": 25, "tabler": 400},
        {"noto": "emoji", "streamline": "emoji", "tabler": "icon"},
    )
    assert weights["noto"] + weights["streamline"] == pytest.approx(0.7)
    assert weights["noto"] == pytest.approx(2 * weights["streamline"])  # sqrt(100) / sqrt(25)
    assert weights["tabler"] == pytest.approx(0.3)


def test_training_draws_follow_the_sampling_weights(tmp_path):
    prepare(fake_node_modules(tmp_path / "nm"), tmp_path / "out", sizes=(16,), workers=1)
    data = load_emoji(tmp_path / "out", 16, split="all")
    bell = data.captions.index("bell icon, tabler style")
    drawn = data.draw(20_000, torch.Generator().manual_seed(0))
    icon_share = (drawn == bell).double().mean().item()  # the one icon holds the icons' 30 %
    assert icon_share == pytest.approx(0.3, abs=0.015)
    assert data.subset(torch.tensor([0, bell])).weights.tolist() == data.weights[[0, bell]].tolist()


def test_credits_refuse_a_set_whose_licence_is_not_allowed(tmp_path):
    nm = fake_node_modules(tmp_path / "nm")
    (nm / "@tabler" / "icons" / "package.json").write_text(json.dumps({"name": "x", "license": "CC-BY-NC-4.0"}))
    with pytest.raises(ValueError, match="CC-BY-NC-4.0"):
        source_credits(nm, [source("tabler")])


def test_each_image_has_fixed_caption_variants_and_batches_draw_among_them(tmp_path):
    prepare(fake_node_modules(tmp_path / "nm"), tmp_path / "out", sizes=(16,), workers=1)
    data = load_emoji(tmp_path / "out", 16, split="all")
    again = load_emoji(tmp_path / "out", 16, split="all")
    assert data.caption_variants == again.caption_variants and len(data.caption_variants[0]) == 4
    bell = data.captions.index("bell icon, tabler style")
    drawn = data.sample_captions(torch.tensor([bell] * 6), random.Random(0))
    assert set(drawn) <= set(data.caption_variants[bell])
    part = data.subset(torch.tensor([bell]))
    assert part.records[0].name == "bell" and part.caption_variants == [data.caption_variants[bell]]


def test_load_keeps_only_the_records_asked_for(tmp_path):
    prepare(fake_node_modules(tmp_path / "nm"), tmp_path / "out", sizes=(16,), workers=1)
    hearts = load_emoji(tmp_path / "out", 16, split="all", keep=lambda r: r.concept == RED_HEART)
    assert [r.source for r in hearts.records] == ["noto", "noto-blob"]
    with pytest.raises(ValueError, match="no image"):
        load_emoji(tmp_path / "out", 16, split="all", keep=lambda r: False)


needs_packages = pytest.mark.skipif(not NODE_MODULES.is_dir(), reason="npm data packages not installed (make install)")


@pytest.fixture(scope="module")
def packaged():
    return find_sources(NODE_MODULES)


@needs_packages
def test_every_packaged_source_is_found_with_its_expected_size(packaged):
    found, missing = packaged
    assert missing == {}
    counts = {name: len(records) for name, records in found.items()}
    assert counts["noto"] > 1800 and counts["twemoji"] > 1800 and counts["openmoji"] > 2300 and counts["tabler"] > 6000
    assert counts["fluent-3d"] > 1500 and counts["fluent-flat"] > 1500 and counts["noto-mono"] > 1300
    assert all(record.name and record.file and record.style for records in found.values() for record in records)
    for records in found.values():  # a key names one image of a source
        assert len({r.key for r in records}) == len(records)


@needs_packages
def test_every_emoji_source_names_the_red_heart_red_heart_and_never_black(packaged):
    found, _ = packaged
    emoji_sources = [s.name for s in SOURCES if s.kind == "emoji"]
    hearts = {name: [r for r in found[name] if r.concept == RED_HEART] for name in emoji_sources}
    counts = {name: len(records) for name, records in hearts.items()}
    assert counts == {name: 0 if name == "streamline" else 1 for name in emoji_sources}  # Streamline has no ❤️
    rng = random.Random(0)
    for heart in (records[0] for records in hearts.values() if records):
        assert heart.name == "red heart"
        captions = {heart.caption(), *(heart.caption(rng) for _ in range(200))}
        assert not any("black" in c for c in captions), captions


@needs_packages
def test_emoji_concepts_have_about_ten_images_each(packaged):
    found, _ = packaged
    emoji = [r for records in found.values() for r in records if r.kind == "emoji" and "openmoji:" not in r.concept]
    concepts = {r.concept for r in emoji}
    assert len(concepts) > 1800
    assert len(emoji) / len(concepts) > 9  # 2.9 before the new styles
    names = EmojiNames.from_emojibase(NODE_MODULES / "emojibase-data")
    assert all(r.name == names.by_key[r.concept].name for r in emoji)  # one name per concept, every style
