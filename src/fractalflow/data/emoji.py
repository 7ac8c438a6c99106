"""The default text-to-image set: emoji and icons from packages, rasterised on white.

Sources (see shared/DATA.md): Noto emoji and Twemoji as 64 px PNGs from the npm packages
``emoji-datasource-google`` / ``emoji-datasource-twitter``, OpenMoji colour SVGs from npm
``openmoji``, Tabler outline and filled SVGs from npm ``@tabler/icons``. ``prepare``
writes a packed cache (``images-<size>.npy`` + ``records.jsonl``) that
:func:`load_emoji` reads back as :class:`CaptionedImages`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fractalflow.data.dataset import CaptionedImages
from fractalflow.files import atomic_path, atomic_write_text

SOURCES = ("noto", "openmoji", "twemoji", "tabler")
RECORDS_NAME = "records.jsonl"


def is_eval(source: str, key: str) -> bool:
    """The held-out rule shared by every tool: sha1("source:key") as an integer is 0 mod 20."""
    return int(hashlib.sha1(f"{source}:{key}".encode()).hexdigest(), 16) % 20 == 0


@dataclass
class EmojiRecord:
    """One image of the set and what its captions are built from."""

    source: str
    key: str
    name: str
    tags: list[str] = field(default_factory=list)
    category: str = ""
    file: str = ""
    split: str = "train"

    def caption(self, rng: random.Random | None = None) -> str:
        """A caption: name, style word, and (with ``rng``) a random subset of tags.

        Without ``rng`` the full caption with no tags: "grinning face, openmoji style",
        "bell icon". With ``rng`` the style word is kept 3 times in 4 and 0 to 3 tags follow,
        so "bicycle" and "bell icon, notification" both mean something.
        """
        if self.source == "tabler":
            head = f"{self.name} icon" if rng is None or rng.random() < 0.75 else self.name
        else:
            head = f"{self.name}, {self.source} style" if rng is None or rng.random() < 0.75 else self.name
        if rng is None or not self.tags:
            return head
        tags = [t for t in self.tags if t.lower() not in self.name.lower()]
        chosen = rng.sample(tags, k=min(len(tags), rng.randint(0, 3)))
        return ", ".join([head, *chosen])


def _clean(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").split()).lower()


def find_emoji_datasource(root: Path, source: str, image_set: str) -> Iterator[EmojiRecord]:
    """Records of an ``emoji-datasource-<set>`` package (one per emoji, skin tones left out)."""
    for entry in json.loads((root / "emoji.json").read_text()):
        if not entry.get(f"has_img_{image_set}", True):
            continue
        path = root / "img" / image_set / "64" / entry["image"]
        if not path.is_file():
            continue
        name = _clean(entry.get("name") or entry["short_name"])
        tags = [_clean(s) for s in entry.get("short_names", [])] + [_clean(entry.get("subcategory", ""))]
        key = entry["unified"].lower()
        yield EmojiRecord(
            source, key, name, [t for t in dict.fromkeys(tags) if t], _clean(entry.get("category", "")), str(path)
        )


def find_openmoji(root: Path) -> Iterator[EmojiRecord]:
    """OpenMoji colour SVGs with annotation and tags (skin-tone variants left out)."""
    for entry in json.loads((root / "data" / "openmoji.json").read_text()):
        if entry.get("skintone"):
            continue
        path = root / "color" / "svg" / f"{entry['hexcode']}.svg"
        if not path.is_file():
            continue
        tags = [_clean(t) for t in f"{entry.get('tags', '')},{entry.get('openmoji_tags', '')}".split(",")]
        yield EmojiRecord(
            "openmoji",
            entry["hexcode"].lower(),
            _clean(entry["annotation"]),
            [t for t in dict.fromkeys(tags) if t],
            _clean(entry.get("group", "")),
            str(path),
        )


def find_tabler(root: Path) -> Iterator[EmojiRecord]:
    """Tabler icons, outline and filled, with category and tags."""
    for name, entry in json.loads((root / "icons.json").read_text()).items():
        tags = [_clean(str(t)) for t in entry.get("tags", [])] + [_clean(entry.get("category", ""))]
        tags = [t for t in dict.fromkeys(tags) if t]
        for style in ("outline", "filled"):
            path = root / "icons" / style / f"{name}.svg"
            if style in entry.get("styles", {"outline": {}}) and path.is_file():
                label = _clean(name) if style == "outline" else f"{_clean(name)} filled"
                yield EmojiRecord(
                    "tabler", f"{name}-{style}", label, tags, _clean(entry.get("category", "")), str(path)
                )


def find_sources(node_modules: Path) -> tuple[dict[str, list[EmojiRecord]], dict[str, str]]:
    """Records per source found under ``node_modules``, and a message per missing source."""
    layout = {
        "noto": ("emoji-datasource-google", lambda p: find_emoji_datasource(p, "noto", "google")),
        "twemoji": ("emoji-datasource-twitter", lambda p: find_emoji_datasource(p, "twemoji", "twitter")),
        "openmoji": ("openmoji", find_openmoji),
        "tabler": ("@tabler/icons", find_tabler),
    }
    found, missing = {}, {}
    for source, (package, finder) in layout.items():
        root = node_modules / package
        if not root.is_dir():
            missing[source] = f"npm package {package!r} not found under {node_modules}"
            continue
        records = list(finder(root))
        for record in records:
            record.split = "eval" if is_eval(record.source, record.key) else "train"
        found[source] = records
    return found, missing


def rasterise(record: EmojiRecord, size: int) -> np.ndarray:
    """The record's image as ``(size, size, 3)`` uint8 RGB, alpha composited on white."""
    if record.file.endswith(".svg"):
        import resvg_py

        png = bytes(resvg_py.svg_to_bytes(svg_path=record.file, width=size, height=size))
        image = Image.open(io.BytesIO(png))
    else:
        image = Image.open(record.file)
    rgba = image.convert("RGBA")
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return np.asarray(canvas.convert("RGB"))


def prepare(node_modules: Path, out_dir: Path, sizes: tuple[int, ...] = (64, 128), workers: int = 4) -> dict:
    """Rasterise every found source at every size into ``out_dir``; returns counts per source and split."""
    found, missing = find_sources(node_modules)
    if not found:
        raise FileNotFoundError("no data source found: " + "; ".join(missing.values()))
    records = [r for source in SOURCES for r in found.get(source, [])]
    out_dir.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        with ThreadPoolExecutor(workers) as pool:
            images = np.stack(list(pool.map(rasterise, records, [size] * len(records))))
        with atomic_path(out_dir / f"images-{size}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, images)
    atomic_write_text(out_dir / RECORDS_NAME, "".join(json.dumps(asdict(r)) + "\n" for r in records))
    counts = Counter((r.source, r.split) for r in records)
    return {
        "sizes": list(sizes),
        "counts": {s: {"train": counts[(s, "train")], "eval": counts[(s, "eval")]} for s in found},
        "missing": missing,
    }


CAPTION_VARIANTS = 4


@dataclass
class EmojiDataset(CaptionedImages):
    """Emoji and icons with their records. Each image has ``CAPTION_VARIANTS`` phrasings
    (name, style word, random tags) fixed at load time, so a text encoder's cache holds
    every caption the training can draw; each batch draws one phrasing per image."""

    records: list[EmojiRecord] = field(default_factory=list)
    caption_variants: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.caption_variants:
            self.caption_variants = [
                [record.caption(random.Random(f"{record.source}:{record.key}:{k}")) for k in range(CAPTION_VARIANTS)]
                for record in self.records
            ]

    def sample_captions(self, indices: torch.Tensor, rng: random.Random) -> list[str]:
        return [rng.choice(self.caption_variants[i]) for i in indices.tolist()]

    def subset(self, indices: torch.Tensor) -> EmojiDataset:
        rows = indices.tolist()
        base = super().subset(indices)
        return EmojiDataset(
            **{f.name: getattr(base, f.name) for f in dataclasses.fields(CaptionedImages)},
            records=[self.records[i] for i in rows],
            caption_variants=[self.caption_variants[i] for i in rows],
        )


def prepared_sizes(root: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in root.glob("images-*.npy"))


def load_emoji(root: str | Path, image_size: int = 64, split: str = "train") -> EmojiDataset:
    """The prepared set, ``split`` train/eval/all; every prepared size is kept in memory
    so multi-resolution training reads stored pixels, ``image_size`` being the main one."""
    root = Path(root)
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split={split!r}; allowed: 'train', 'eval', 'all'")
    sizes = prepared_sizes(root)
    if not (root / RECORDS_NAME).is_file() or not sizes:
        raise FileNotFoundError(f"{root} holds no prepared emoji set (run 'fractalflow data prepare --out {root}')")
    records = [EmojiRecord(**json.loads(line)) for line in (root / RECORDS_NAME).read_text().splitlines()]
    keep = [i for i, r in enumerate(records) if split == "all" or r.split == split]

    def read(size: int) -> torch.Tensor:
        array = np.load(root / f"images-{size}.npy", mmap_mode="r")[keep]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()

    stored = {size: read(size) for size in sizes}
    main_size = image_size if image_size in stored else max(sizes)
    return EmojiDataset(
        images=stored.pop(main_size),
        captions=[records[i].caption() for i in keep],
        other_sizes=stored,
        records=[records[i] for i in keep],
    )
