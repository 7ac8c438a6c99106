"""The emoji and icon set: split rule, captions, preparation from (fake) npm packages."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fractalflow.data import load_dataset
from fractalflow.data.emoji import EmojiRecord, find_sources, is_eval, load_emoji, prepare

SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
    '<rect x="4" y="4" width="16" height="16" fill="{}"/></svg>'
)


def test_split_rule_is_sha1_mod_20_deterministic_and_about_five_percent():
    keys = [f"{i:05x}" for i in range(4000)]
    held_out = [k for k in keys if is_eval("openmoji", k)]
    assert held_out == [k for k in keys if int(hashlib.sha1(f"openmoji:{k}".encode()).hexdigest(), 16) % 20 == 0]
    assert 0.04 < len(held_out) / len(keys) < 0.06
    assert {k for k in keys if is_eval("noto", k)} != set(held_out)  # the source is part of the key


def test_captions_name_style_and_a_random_subset_of_tags():
    emoji = EmojiRecord("openmoji", "1f600", "grinning face", ["happy", "smile", "grin", "face"])
    icon = EmojiRecord("tabler", "bell-outline", "bell", ["notification", "alarm"])
    assert emoji.caption() == "grinning face, openmoji style"
    assert icon.caption() == "bell icon"
    rng = random.Random(0)
    for _ in range(50):
        parts = emoji.caption(rng).split(", ")
        assert parts[0] == "grinning face"
        tags = [p for p in parts[1:] if p != "openmoji style"]
        assert len(tags) <= 3 and set(tags) <= {"happy", "smile", "grin"}  # "face" is already in the name
    assert len({emoji.caption(rng) for _ in range(50)}) > 5


def fake_node_modules(root):
    google = root / "emoji-datasource-google"
    (google / "img" / "google" / "64").mkdir(parents=True)
    entries = []
    for code, colour in (("1f600", (250, 200, 0, 255)), ("2764-fe0f", (220, 0, 0, 255))):
        Image.new("RGBA", (64, 64), colour).save(google / "img" / "google" / "64" / f"{code}.png")
        entries.append(
            {
                "unified": code.upper(),
                "image": f"{code}.png",
                "name": f"emoji {code}",
                "short_name": code,
                "short_names": [code],
                "category": "Smileys",
                "subcategory": "face",
            }
        )
    (google / "emoji.json").write_text(json.dumps(entries))
    tabler = root / "@tabler" / "icons"
    (tabler / "icons" / "outline").mkdir(parents=True)
    (tabler / "icons" / "outline" / "bell.svg").write_text(SVG.format("black"))
    (tabler / "icons.json").write_text(
        json.dumps({"bell": {"name": "bell", "category": "System", "tags": ["alarm"], "styles": {"outline": {}}}})
    )
    return root


def test_prepare_skips_missing_sources_with_a_message_and_builds_the_rest(tmp_path):
    summary = prepare(fake_node_modules(tmp_path / "node_modules"), tmp_path / "out", sizes=(16, 32), workers=1)
    assert set(summary["missing"]) == {"openmoji", "twemoji"}
    assert "emoji-datasource-twitter" in summary["missing"]["twemoji"]
    assert {s: c["train"] + c["eval"] for s, c in summary["counts"].items()} == {"noto": 2, "tabler": 1}
    data = load_emoji(tmp_path / "out", image_size=16, split="all")
    assert data.images.shape == (3, 3, 16, 16) and data.other_sizes[32].shape == (3, 3, 32, 32)
    assert data.captions == ["emoji 1f600, noto style", "emoji 2764 fe0f, noto style", "bell icon"]
    assert data.images[0, :, 8, 8].tolist() == [250, 200, 0]
    assert data.images[2, :, 0, 0].tolist() == [255, 255, 255]  # transparent corner -> white
    torch.testing.assert_close(data.pixels(torch.tensor([0]), 32), data.other_sizes[32][:1].float() / 127.5 - 1)
    assert load_dataset(str(tmp_path / "out"), 16, split="all").captions == data.captions


def test_prepare_with_no_source_at_all_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data source found"):
        prepare(tmp_path, tmp_path / "out")


def test_records_follow_the_split_rule(tmp_path):
    prepare(fake_node_modules(tmp_path / "nm"), tmp_path / "out", sizes=(16,), workers=1)
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    for record in records:
        assert record["split"] == ("eval" if is_eval(record["source"], record["key"]) else "train")
    assert np.load(tmp_path / "out" / "images-16.npy").dtype == np.uint8


NODE_MODULES = Path(__file__).resolve().parents[1] / "data" / "node_modules"


@pytest.mark.skipif(not NODE_MODULES.is_dir(), reason="npm data packages not installed (make install)")
def test_every_packaged_source_is_found_with_its_expected_size():
    found, missing = find_sources(NODE_MODULES)
    assert missing == {}
    counts = {source: len(records) for source, records in found.items()}
    assert counts["noto"] > 1800 and counts["twemoji"] > 1800 and counts["openmoji"] > 2300 and counts["tabler"] > 6000
    assert all(record.name and record.file for records in found.values() for record in records)


def test_each_image_has_fixed_caption_variants_and_batches_draw_among_them(tmp_path):
    prepare(fake_node_modules(tmp_path / "nm"), tmp_path / "out", sizes=(16,), workers=1)
    data = load_emoji(tmp_path / "out", 16, split="all")
    again = load_emoji(tmp_path / "out", 16, split="all")
    assert data.caption_variants == again.caption_variants and len(data.caption_variants[0]) == 4
    drawn = data.sample_captions(torch.tensor([2, 2, 2, 2, 2, 2]), random.Random(0))
    assert set(drawn) <= set(data.caption_variants[2])
    part = data.subset(torch.tensor([2]))
    assert part.records[0].name == "bell" and part.caption_variants == [data.caption_variants[2]]
