"""Concept retrieval: does a generated emoji show the concept it was asked for?

For each held-out emoji caption the model draws an image; its nearest real image
(EfficientNet-Lite0 features, cosine) among the real images of the held-out concepts in
*other* art styles is found, and the query scores a hit when that image shows the asked
concept. The same measured for the real held-out images is the ceiling; chance is the
share of a query's candidates that show its concept, averaged over queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fractalflow.data.emoji import EmojiDataset, load_emoji
from fractalflow.data.emoji_sources import EmojiRecord


def is_emoji_concept(record: EmojiRecord) -> bool:
    """An emoji named by code points (not an icon, not one of OpenMoji's own extra images)."""
    return record.kind == "emoji" and not record.concept.startswith(("icon:", "openmoji:"))


def asked_concept_images(data, held_out: EmojiDataset, rows: list[int], size: int) -> EmojiDataset | None:
    """Every real image (all splits and styles) in the prepared folder ``data`` of the emoji
    concepts of the held-out ``rows`` an eval asks for; None when it asks for no emoji."""
    concepts = {held_out.records[i].concept for i in rows if is_emoji_concept(held_out.records[i])}
    if not concepts:
        return None
    return load_emoji(data, size, split="all", keep=lambda record: record.concept in concepts)


@dataclass
class ConceptGallery:
    """Unit-length features of real images, with the concept and source of each."""

    features: np.ndarray
    concepts: np.ndarray
    sources: np.ndarray

    @classmethod
    def of(cls, dataset: EmojiDataset, features: np.ndarray) -> ConceptGallery:
        return cls(
            unit(features),
            np.array([r.concept for r in dataset.records]),
            np.array([r.source for r in dataset.records]),
        )


def unit(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def concept_retrieval(features: np.ndarray, queries: list[EmojiRecord], gallery: ConceptGallery) -> dict[str, float]:
    """Share of ``queries`` whose image (``features``, one row per query) has as nearest
    other-style gallery image one of the asked concept; with the chance level."""
    if len(features) != len(queries):
        raise ValueError(f"{len(features)} feature rows for {len(queries)} queries")
    if not queries:
        raise ValueError("concept retrieval needs at least one emoji query")
    similarity = unit(features) @ gallery.features.T  # (queries, gallery)
    hits, chance = [], []
    for row, query in zip(similarity, queries):
        other_style = gallery.sources != query.source
        if not other_style.any():
            raise ValueError(f"no gallery image outside style {query.source!r}")
        same_concept = gallery.concepts[other_style] == query.concept
        nearest = int(np.argmax(np.where(other_style, row, -np.inf)))
        hits.append(gallery.concepts[nearest] == query.concept)
        chance.append(same_concept.mean())
    return {"concept_retrieval": float(np.mean(hits)), "chance": float(np.mean(chance)), "queries": len(queries)}
