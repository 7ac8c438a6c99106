"""Where the emoji and icon images come from: one :class:`Source` per art style.

Every source is an npm package installed under ``data/node_modules`` (``data/package.json``).
Emoji sources name each image by its code points and take the CLDR name from
:class:`~fractalflow.data.emoji_names.EmojiNames`; sets that only name their images
(Iconify's emoji sets) are matched to code points by the set's own code point table or by
name. Icon sources name each image by the icon's name. Brand logos are left out.

Left out on purpose (art not licensed for this): ``emoji-datasource-apple`` / ``-facebook``,
EmojiOne 3+ / JoyPixels, Mutant Standard, and any non-commercial, GPL or share-alike icon set.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fractalflow.data.emoji_names import EmojiName, EmojiNames, clean, codepoint_key, has_skin_tone


@dataclass
class EmojiRecord:
    """One image of the set and what its captions are built from.

    ``concept``: what the image shows, shared by every style of it: the code point key for
    emoji ("2764"), ``icon:<name>`` for icons. ``style``: the caption's style phrase.
    ``aliases``: other names (old Unicode names, shortcodes, the source's own name), kept
    for search and matching, never put in captions. ``part``: the icon's name inside an
    Iconify JSON file or the character inside a font, when ``file`` holds many images.
    """

    source: str
    key: str
    name: str
    tags: list[str] = field(default_factory=list)
    category: str = ""
    file: str = ""
    split: str = "train"
    kind: str = "emoji"
    concept: str = ""
    style: str = ""
    aliases: list[str] = field(default_factory=list)
    part: str = ""

    def caption(self, rng: random.Random | None = None) -> str:
        """A caption: name, style phrase, and (with ``rng``) a random subset of tags.

        Without ``rng`` the full caption with no tags: "red heart, noto style", "bell icon,
        tabler style". With ``rng`` the style phrase is kept 3 times in 4 and 0 to 3 CLDR
        keywords (or icon tags) follow, so "red heart" and "bell icon, alarm" both mean something.
        Monochrome emoji styles always keep their style phrase: a bare "red heart" is drawn in
        colour, as a user means it, not as the black outline of a monochrome set.
        """
        head = f"{self.name} icon" if self.kind == "icon" else self.name
        if rng is None or self.source in MONOCHROME_EMOJI_SOURCES or rng.random() < 0.75:
            head = f"{head}, {self.style or f'{self.source} style'}"
        if rng is None or not self.tags:
            return head
        tags = [t for t in self.tags if t.lower() not in self.name.lower()]
        chosen = rng.sample(tags, k=min(len(tags), rng.randint(0, 3)))
        return ", ".join([head, *chosen])


@dataclass(frozen=True)
class Source:
    """One art style: the npm package it comes from and how to list its images."""

    name: str
    package: str
    kind: str
    style: str
    finder: Callable[..., Iterator[EmojiRecord]]
    args: tuple = ()
    art_licence: str = ""
    art_author: str = ""
    monochrome: bool = False  # an emoji style drawn in one colour (outline or glyph)

    def find(self, root: Path, names: EmojiNames) -> Iterator[EmojiRecord]:
        """The source's records, given its package folder and the CLDR names."""
        return self.finder(self, root, names, *self.args)


def emoji_record(source: Source, name: EmojiName, file: str, part: str = "", alias: str = "") -> EmojiRecord:
    aliases = [a for a in dict.fromkeys([*name.aliases, clean(alias)]) if a and a != name.name]
    return EmojiRecord(
        source=source.name,
        key=name.key,
        name=name.name,
        tags=list(name.tags),
        category=name.group,
        file=file,
        kind="emoji",
        concept=name.key,
        style=source.style,
        aliases=aliases,
        part=part,
    )


def icon_record(
    source: Source, key: str, name: str, tags: list[str], category: str, file: str, part: str = ""
) -> EmojiRecord:
    name = clean(name)
    tags = [t for t in dict.fromkeys(clean(t) for t in tags) if t and t != name]
    return EmojiRecord(
        source=source.name,
        key=key,
        name=name,
        tags=tags,
        category=clean(category),
        file=file,
        kind="icon",
        concept=f"icon:{name}",
        style=source.style,
        part=part,
    )


def unique_concepts(records: Iterator[EmojiRecord]) -> Iterator[EmojiRecord]:
    """One image per concept and source (a set may draw an emoji twice, under two names)."""
    seen: set[str] = set()
    for record in records:
        if record.concept not in seen:
            seen.add(record.concept)
            yield record


# ---- emoji, named by code points ----


def find_emoji_datasource(source: Source, root: Path, names: EmojiNames, image_set: str) -> Iterator[EmojiRecord]:
    """An ``emoji-datasource-<set>`` package: 64 px PNGs named by code points."""
    for entry in json.loads((root / "emoji.json").read_text()):
        name = names.get(entry["unified"])
        path = root / "img" / image_set / "64" / entry["image"]
        if name is None or not entry.get(f"has_img_{image_set}", True) or not path.is_file():
            continue
        yield emoji_record(source, name, str(path), alias=entry.get("name") or "")


def find_openmoji(source: Source, root: Path, names: EmojiNames, colour: str) -> Iterator[EmojiRecord]:
    """OpenMoji SVGs (``color`` or ``black``); OpenMoji's own extra icons keep their annotation."""
    for entry in json.loads((root / "data" / "openmoji.json").read_text()):
        path = root / colour / "svg" / f"{entry['hexcode']}.svg"
        if entry.get("skintone") or not path.is_file():
            continue
        name = names.get(entry["hexcode"])
        if name is not None:
            yield emoji_record(source, name, str(path))
        elif entry["group"].startswith("extras"):
            tags = f"{entry.get('tags', '')},{entry.get('openmoji_tags', '')}".split(",")
            record = icon_record(
                source, codepoint_key(entry["hexcode"]), entry["annotation"], tags, entry["group"], str(path)
            )
            record.kind, record.concept = "emoji", f"openmoji:{record.key}"
            yield record


def find_fluent_3d(source: Source, root: Path, names: EmojiNames) -> Iterator[EmojiRecord]:
    """``@lobehub/fluent-emoji-3d``: 256 px WebP files named by code points."""
    records = (
        emoji_record(source, names.get(path.stem), str(path))
        for path in sorted((root / "assets").glob("*.webp"))
        if names.get(path.stem) is not None and not has_skin_tone(codepoint_key(path.stem))
    )
    yield from unique_concepts(records)


def find_iconify_emoji(
    source: Source, root: Path, names: EmojiNames, code_points_from: str = ""
) -> Iterator[EmojiRecord]:
    """An ``@iconify-json/<set>`` emoji set: icons matched to code points by the set's
    ``chars.json`` (or that of ``code_points_from``, a set with the same icon names), else by name."""
    table_root = root.parent / code_points_from if code_points_from else root
    chars = table_root / "chars.json"
    key_of_icon = {icon: key for key, icon in json.loads(chars.read_text()).items()} if chars.is_file() else {}
    icons = json.loads((root / "icons.json").read_text())["icons"]
    records = []
    for icon in icons:
        name = names.get(key_of_icon[icon]) if icon in key_of_icon else names.find(icon, re.sub(r"-\d+$", "", icon))
        if name is not None and not has_skin_tone(name.key):
            records.append(emoji_record(source, name, str(root / "icons.json"), part=icon, alias=icon))
    yield from unique_concepts(iter(records))


def find_noto_font(source: Source, root: Path, names: EmojiNames, weight: int = 400) -> Iterator[EmojiRecord]:
    """``@fontsource/noto-emoji``: the monochrome Noto Emoji font, one glyph per single-code-point emoji."""
    from fontTools.ttLib import TTFont

    seen = set()
    for path in sorted((root / "files").glob(f"noto-emoji-*-{weight}-normal.woff")):
        for code in TTFont(path).getBestCmap():
            name = names.get(f"{code:x}")
            if name is not None and name.key not in seen and "-" not in name.key:
                seen.add(name.key)
                yield emoji_record(source, name, str(path), part=chr(code))


# ---- icons, named by name ----

BRAND_WORDS = ("brand", "logo")


def find_tabler(source: Source, root: Path, names: EmojiNames) -> Iterator[EmojiRecord]:
    """Tabler icons, outline and filled (brand icons left out)."""
    for name, entry in json.loads((root / "icons.json").read_text()).items():
        if name.startswith("brand-") or entry.get("category", "").lower() == "brand":
            continue
        tags = [str(t) for t in entry.get("tags", [])] + [entry.get("category", "")]
        for style in ("outline", "filled"):
            path = root / "icons" / style / f"{name}.svg"
            if style in entry.get("styles", {"outline": {}}) and path.is_file():
                record = icon_record(source, f"{name}-{style}", name, tags, entry.get("category", ""), str(path))
                record.style = "tabler style" if style == "outline" else "tabler filled style"
                yield record


PHOSPHOR_ENTRY = re.compile(
    r'name: "([^"]+)",\s*pascal_name:[^\n]*\n\s*categories: \[([^\]]*)\][\s\S]*?tags: \[([^\]]*)\]'
)


def find_phosphor(source: Source, root: Path, names: EmojiNames, weights: tuple[str, ...]) -> Iterator[EmojiRecord]:
    """``@phosphor-icons/core``: SVGs per weight, tags and categories from its catalog."""
    catalog = (root / "dist" / "index.mjs").read_text()
    for match in PHOSPHOR_ENTRY.finditer(catalog):
        name, categories, tags = match.groups()
        if "BRAND" in categories:
            continue
        tags = [t.strip().strip('"') for t in tags.split(",") if t.strip() and "*" not in t]
        for weight in weights:
            suffix = "" if weight == "regular" else f"-{weight}"
            path = root / "assets" / weight / f"{name}{suffix}.svg"
            if path.is_file():
                record = icon_record(source, f"{name}-{weight}", name, tags, "", str(path))
                record.style = f"phosphor {weight} style"
                yield record


LUCIDE_BRANDS = frozenset(
    "chromium chrome codepen codesandbox dribbble facebook figma framer github gitlab instagram linkedin "
    "pocket rail-symbol slack trello twitch twitter youtube".split()
)


def find_lucide(source: Source, root: Path, names: EmojiNames) -> Iterator[EmojiRecord]:
    """``lucide-static``: SVGs with tags from ``tags.json`` (brand icons left out)."""
    tags = json.loads((root / "tags.json").read_text())
    for path in sorted((root / "icons").glob("*.svg")):
        if path.stem not in LUCIDE_BRANDS:
            yield icon_record(source, path.stem, path.stem, tags.get(path.stem, []), "", str(path))


MATERIAL_VARIANTS = ("outline", "rounded", "sharp")


def find_material_symbols(source: Source, root: Path, names: EmojiNames) -> Iterator[EmojiRecord]:
    """``@iconify-json/material-symbols``: each icon with its outline / rounded / sharp variants."""
    data = json.loads((root / "icons.json").read_text())
    categories = {icon: c for c, icons in data.get("categories", {}).items() for icon in icons}
    for icon in data["icons"]:
        words = icon.split("-")
        variant = "-".join(w for w in words if w in MATERIAL_VARIANTS)
        base = "-".join(w for w in words if w not in MATERIAL_VARIANTS)
        if not base or any(w in BRAND_WORDS for w in words):
            continue
        record = icon_record(source, icon, base, [], categories.get(icon, ""), str(root / "icons.json"), part=icon)
        record.style = f"material symbols {variant.replace('-', ' ')} style" if variant else "material symbols style"
        yield record


SOURCES: tuple[Source, ...] = (
    # art licence and author where the package's own fields name its packager or cover only its code
    # (the emoji-datasource README gives the art's licences; LobeHub repackages Microsoft's Fluent 3D)
    Source(
        "noto",
        "emoji-datasource-google",
        "emoji",
        "noto style",
        find_emoji_datasource,
        ("google",),
        art_licence="Apache-2.0",
        art_author="Google (packaged by Cal Henderson)",
    ),
    Source(
        "twemoji",
        "emoji-datasource-twitter",
        "emoji",
        "twemoji style",
        find_emoji_datasource,
        ("twitter",),
        art_licence="CC-BY-4.0",
        art_author="Twitter and Twemoji contributors (packaged by Cal Henderson)",
    ),
    Source("openmoji", "openmoji", "emoji", "openmoji style", find_openmoji, ("color",)),
    Source(
        "openmoji-outline", "openmoji", "emoji", "openmoji outline style", find_openmoji, ("black",), monochrome=True
    ),
    Source(
        "fluent-3d",
        "@lobehub/fluent-emoji-3d",
        "emoji",
        "fluent 3d style",
        find_fluent_3d,
        art_author="Microsoft Corporation (packaged by LobeHub)",
    ),
    Source(
        "fluent-color",
        "@iconify-json/fluent-emoji",
        "emoji",
        "fluent color style",
        find_iconify_emoji,
        ("fluent-emoji-flat",),
    ),
    Source("fluent-flat", "@iconify-json/fluent-emoji-flat", "emoji", "fluent flat style", find_iconify_emoji),
    Source(
        "fluent-high-contrast",
        "@iconify-json/fluent-emoji-high-contrast",
        "emoji",
        "fluent high contrast style",
        find_iconify_emoji,
        monochrome=True,
    ),
    Source("emojione", "@iconify-json/emojione", "emoji", "emojione style", find_iconify_emoji),
    Source(
        "emojione-monotone",
        "@iconify-json/emojione-monotone",
        "emoji",
        "emojione monotone style",
        find_iconify_emoji,
        monochrome=True,
    ),
    Source("noto-blob", "@iconify-json/noto-v1", "emoji", "noto blob style", find_iconify_emoji),
    Source("firefox-os", "@iconify-json/fxemoji", "emoji", "firefox os style", find_iconify_emoji),
    Source("streamline", "@iconify-json/streamline-emojis", "emoji", "streamline style", find_iconify_emoji),
    Source("noto-mono", "@fontsource/noto-emoji", "emoji", "noto monochrome style", find_noto_font, monochrome=True),
    Source("tabler", "@tabler/icons", "icon", "tabler style", find_tabler),
    Source(
        "phosphor",
        "@phosphor-icons/core",
        "icon",
        "phosphor style",
        find_phosphor,
        (("regular", "bold", "fill", "duotone", "thin", "light"),),
    ),
    Source("lucide", "lucide-static", "icon", "lucide style", find_lucide),
    Source("material", "@iconify-json/material-symbols", "icon", "material symbols style", find_material_symbols),
)
SOURCE_NAMES = tuple(s.name for s in SOURCES)
MONOCHROME_EMOJI_SOURCES = frozenset(s.name for s in SOURCES if s.kind == "emoji" and s.monochrome)
NAMES_PACKAGE = "emojibase-data"
# The default budget: every emoji style whole, the large icon sets cut so that emoji are not
# outnumbered (Material Symbols has 16.5k icons, mostly outline/rounded/sharp variants).
DEFAULT_CAPS = {"material": 4000, "phosphor": 4500}
DEFAULT_MAX_IMAGES = 40_000
# Training draws emoji 70 % of the time and icons 30 %; within a kind, a source's share
# grows with the square root of its size, so small styles are seen more often per image.
KIND_SHARES = {"emoji": 0.7, "icon": 0.3}


def source(name: str) -> Source:
    for candidate in SOURCES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown source {name!r}; allowed: {', '.join(SOURCE_NAMES)}")
