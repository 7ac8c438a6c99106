"""The default text-to-image set: emoji in 14 art styles and line icons in 4 sets, from npm packages.

:mod:`fractalflow.data.emoji_sources` lists the sources; every emoji is named by the CLDR
name of its code points (:mod:`fractalflow.data.emoji_names`). ``prepare`` rasterises each
image once at the largest size onto white, area-averages it down to the other sizes, and
writes a packed cache (``images-<size>.npy``, ``records.jsonl``, ``sources.json`` and
``CREDITS.md``) that :func:`load_emoji` reads back as :class:`EmojiDataset`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fractalflow.data.credits import credits_markdown, source_credits
from fractalflow.data.dataset import CaptionedImages
from fractalflow.data.emoji_names import EmojiNames
from fractalflow.data.emoji_sources import (
    DEFAULT_CAPS,
    DEFAULT_MAX_IMAGES,
    KIND_SHARES,
    NAMES_PACKAGE,
    SOURCE_NAMES,
    SOURCES,
    EmojiRecord,
)
from fractalflow.files import atomic_path, atomic_write_text

RECORDS_NAME = "records.jsonl"
MANIFEST_NAME = "sources.json"
CREDITS_NAME = "CREDITS.md"


def image_hash(source: str, key: str) -> str:
    """sha1 of "source:key": the held-out rule and the budgets' order of images both use it."""
    return hashlib.sha1(f"{source}:{key}".encode()).hexdigest()


def is_eval(source: str, key: str) -> bool:
    """The held-out rule shared by every tool: sha1("source:key") as an integer is 0 mod 20."""
    return int(image_hash(source, key), 16) % 20 == 0


def find_sources(node_modules: Path) -> tuple[dict[str, list[EmojiRecord]], dict[str, str]]:
    """Records per source found under ``node_modules``, and a message per missing source."""
    names_root = node_modules / NAMES_PACKAGE
    if not names_root.is_dir():
        raise FileNotFoundError(f"npm package {NAMES_PACKAGE!r} (the CLDR emoji names) not found under {node_modules}")
    names = EmojiNames.from_emojibase(names_root)
    found, missing = {}, {}
    for source in SOURCES:
        root = node_modules / source.package
        if not root.is_dir():
            missing[source.name] = f"npm package {source.package!r} not found under {node_modules}"
            continue
        records = list(source.find(root, names))
        for record in records:
            record.split = "eval" if is_eval(record.source, record.key) else "train"
        found[source.name] = records
    return found, missing


def select(
    found: dict[str, list[EmojiRecord]], max_images: int | None, caps: dict[str, int]
) -> dict[str, list[EmojiRecord]]:
    """Each source cut to its cap, then all cut to ``max_images`` by lowering the largest
    sources first (water-filling); a source keeps the images whose sha1 ranks first, so a
    smaller budget keeps a subset of a larger one's images."""
    ranked = {
        name: sorted(records, key=lambda r: image_hash(r.source, r.key))[: caps.get(name, len(records))]
        for name, records in found.items()
    }
    sizes = {name: len(records) for name, records in ranked.items()}
    if max_images is not None and sum(sizes.values()) > max_images:
        low, high = 0, max(sizes.values())
        while low < high:  # the largest per-source level whose total fits
            level = (low + high + 1) // 2
            low, high = (level, high) if sum(min(n, level) for n in sizes.values()) <= max_images else (low, level - 1)
        sizes = {name: min(n, low) for name, n in sizes.items()}
    return {name: records[: sizes[name]] for name, records in ranked.items()}


def source_weights(counts: dict[str, int], kinds: dict[str, str]) -> dict[str, float]:
    """Each source's share of training draws: ``KIND_SHARES`` split within a kind by sqrt(size)."""
    weights: dict[str, float] = {}
    for kind, share in KIND_SHARES.items():
        members = {name: math.sqrt(n) for name, n in counts.items() if kinds[name] == kind and n}
        total = sum(members.values())
        if total:
            weights.update({name: share * w / total for name, w in members.items()})
    norm = sum(weights.values())
    return {name: w / norm for name, w in weights.items()}


@lru_cache(maxsize=8)
def _iconify_set(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _iconify_svg(path: str, icon: str) -> str:
    data = _iconify_set(path)
    entry = data["icons"][icon]
    box = [entry.get(k, data.get(k, d)) for k, d in (("left", 0), ("top", 0), ("width", 16), ("height", 16))]
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{" ".join(map(str, box))}">{entry["body"]}</svg>'


def _glyph(path: str, char: str, size: int) -> Image.Image:
    """A font glyph drawn black, centred, filling 85 % of a ``size`` square (RGBA)."""
    font = ImageFont.truetype(path, size)
    left, top, right, bottom = font.getbbox(char)
    scale = 0.85 * size / max(right - left, bottom - top, 1)
    font = ImageFont.truetype(path, max(1, round(size * scale)))
    left, top, right, bottom = font.getbbox(char)
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    origin = ((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top)
    ImageDraw.Draw(image).text(origin, char, font=font, fill=(0, 0, 0, 255))
    return image


def rasterise(record: EmojiRecord, size: int) -> np.ndarray:
    """The record's image as ``(size, size, 3)`` uint8 RGB, alpha composited on white."""
    if record.file.endswith((".woff", ".ttf", ".otf")):
        image = _glyph(record.file, record.part, size)
    elif record.file.endswith((".svg", ".json")):
        import resvg_py

        if record.file.endswith(".json"):
            png = resvg_py.svg_to_bytes(svg_string=_iconify_svg(record.file, record.part), width=size, height=size)
        else:
            png = resvg_py.svg_to_bytes(svg_path=record.file, width=size, height=size)
        image = Image.open(io.BytesIO(bytes(png)))
    else:
        image = Image.open(record.file)
    rgba = image.convert("RGBA")
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    canvas.alpha_composite(rgba)
    return np.asarray(canvas.convert("RGB"))


def _render_chunk(chunk: list[EmojiRecord], size: int) -> np.ndarray:
    return np.stack([rasterise(record, size) for record in chunk])


def render(records: list[EmojiRecord], size: int, workers: int) -> np.ndarray:
    """Every record rasterised at ``size``, ``(N, size, size, 3)`` uint8, in ``workers``
    processes (resvg and Pillow hold the GIL, so threads would not run in parallel)."""
    if workers == 1 or len(records) < 256:
        return _render_chunk(records, size)
    step = 512
    chunks = [records[start : start + step] for start in range(0, len(records), step)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return np.concatenate(list(pool.map(_render_chunk, chunks, [size] * len(chunks))))


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 -> ``(N, size, size, 3)`` by averaging ``S // size`` square blocks
    (the pixels ``rasterise`` would give at ``size``, without a second render)."""
    count, side = images.shape[:2]
    if side == size:
        return images
    if side % size:
        raise ValueError(f"sizes must divide the largest size {side}; got {size}")
    factor = side // size
    blocks = images.reshape(count, size, factor, size, factor, 3)  # (N, size, f, size, f, 3)
    return (blocks.mean(axis=(2, 4), dtype=np.float32) + 0.5).astype(np.uint8)


def prepare(
    node_modules: Path,
    out_dir: Path,
    sizes: tuple[int, ...] = (64, 128),
    workers: int = 4,
    max_images: int | None = DEFAULT_MAX_IMAGES,
    caps: dict[str, int] | None = None,
) -> dict:
    """Rasterise the found sources (within the budget) into ``out_dir``: vector art once at the
    largest size and block-averaged down, bitmaps resized from the original at each size. Returns
    counts per source and split, what was missing, the sampling weights and the time taken."""
    started = time.perf_counter()
    caps = DEFAULT_CAPS if caps is None else caps
    unknown = sorted(set(caps) - set(SOURCE_NAMES))
    if unknown:
        raise ValueError(f"caps for unknown sources {unknown}; allowed: {', '.join(SOURCE_NAMES)}")
    found, missing = find_sources(node_modules)
    if not any(found.values()):
        raise FileNotFoundError("no data source found: " + "; ".join(missing.values()))
    available = {name: len(records) for name, records in found.items()}
    chosen = select(found, max_images, caps)
    records = [r for name in SOURCE_NAMES for r in chosen.get(name, [])]
    largest = max(sizes)
    full = render(records, largest, workers)
    # bitmaps (PNG, WebP) are resized from the original at each size, not from the largest render
    bitmaps = [i for i, r in enumerate(records) if r.file.endswith((".png", ".webp"))]
    out_dir.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        images = downsample(full, size)
        if size != largest and bitmaps:
            images[bitmaps] = render([records[i] for i in bitmaps], size, workers)
        with atomic_path(out_dir / f"images-{size}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, images)
    counts = Counter((r.source, r.split) for r in records)
    kinds = {s.name: s.kind for s in SOURCES}
    trained = {r.concept for r in records if r.split == "train"}
    held_out = {r.concept for r in records if r.split == "eval"}
    summary = {
        "sizes": list(sizes),
        "counts": {
            s: {
                "train": counts[(s, "train")],
                "eval": counts[(s, "eval")],
                "concepts": len({r.concept for r in chosen[s]}),
            }
            for s in chosen
        },
        "available": available,
        "weights": source_weights({s: len(r) for s, r in chosen.items()}, kinds),
        "held_out_concepts": len(held_out),
        "held_out_concepts_in_training": len(held_out & trained),
        "max_images": max_images,
        "caps": caps,
        "missing": missing,
        "seconds": round(time.perf_counter() - started, 1),
    }
    sources = [s for s in SOURCES if chosen.get(s.name)]
    credits = source_credits(node_modules, sources)
    atomic_write_text(out_dir / CREDITS_NAME, credits_markdown(credits, summary["counts"]))
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps({**summary, "credits": credits}, indent=2) + "\n")
    atomic_write_text(out_dir / RECORDS_NAME, "".join(json.dumps(asdict(r)) + "\n" for r in records))
    return summary


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


def read_records(root: str | Path) -> list[EmojiRecord]:
    """The records (names, splits, sources; no pixels) of a prepared folder, in stored order."""
    root = Path(root)
    if not (root / RECORDS_NAME).is_file() or not prepared_sizes(root):
        raise FileNotFoundError(f"{root} holds no prepared emoji set (run 'fractalflow data prepare --out {root}')")
    return [EmojiRecord(**json.loads(line)) for line in (root / RECORDS_NAME).read_text().splitlines()]


def load_emoji(
    root: str | Path,
    image_size: int = 64,
    split: str = "train",
    keep: Callable[[EmojiRecord], bool] | None = None,
) -> EmojiDataset:
    """The prepared set, ``split`` train/eval/all (and, with ``keep``, only the records it
    accepts); every prepared size is kept in memory so multi-resolution training reads
    stored pixels, ``image_size`` being the main one."""
    root = Path(root)
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split={split!r}; allowed: 'train', 'eval', 'all'")
    records = read_records(root)
    sizes = prepared_sizes(root)
    rows = [i for i, r in enumerate(records) if (split == "all" or r.split == split) and (keep is None or keep(r))]
    if not rows:
        raise ValueError(f"no image of {root} is in split {split!r} and accepted by keep")

    def read(size: int) -> torch.Tensor:
        array = np.load(root / f"images-{size}.npy", mmap_mode="r")[rows]
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()

    stored = {size: read(size) for size in sizes}
    main_size = image_size if image_size in stored else max(sizes)
    kept = [records[i] for i in rows]
    return EmojiDataset(
        images=stored.pop(main_size),
        captions=[record.caption() for record in kept],
        other_sizes=stored,
        weights=sampling_weights(kept),
        records=kept,
    )


def sampling_weights(records: list[EmojiRecord]) -> torch.Tensor:
    """Per-image draw probabilities that give each source its :func:`source_weights` share."""
    counts = Counter(r.source for r in records)
    shares = source_weights(dict(counts), {r.source: r.kind for r in records})
    return torch.tensor([shares[r.source] / counts[r.source] for r in records], dtype=torch.float64)
