"""One name per emoji: the CLDR name of its code point sequence, from npm ``emojibase-data``.

Packages name the same emoji differently: ``emoji-datasource-*`` carries the old Unicode
names ("heavy black heart" for U+2764), OpenMoji and CLDR say "red heart". Every emoji
image, whatever its source, is captioned with the CLDR name (``label``) and CLDR keywords
(``tags``) of its code points; old names, shortcodes and a source's own names are kept as
aliases, used to find which emoji a named icon shows, never in captions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
VARIATION_SELECTOR = "fe0f"


def codepoint_key(sequence: str) -> str:
    """A code point sequence as one key: lower-case hex joined by "-", without U+FE0F.

    "2764-FE0F" and "2764" are the same emoji; so are "1F441-FE0F-200D-1F5E8-FE0F" and
    "1f441-200d-1f5e8". Underscores and spaces are accepted as separators.
    """
    parts = re.split(r"[-_\s]+", sequence.strip().lower())
    return "-".join(p.lstrip("0").rjust(4, "0") for p in parts if p and p != VARIATION_SELECTOR)


def has_skin_tone(key: str) -> bool:
    return any(part in SKIN_TONES for part in key.split("-"))


def slug(text: str) -> str:
    """A name reduced for matching: lower case, letters and digits only ("Red-Heart" -> "redheart")."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@dataclass(frozen=True)
class EmojiName:
    """The CLDR name and keywords of one emoji, with its group and every other name it goes by."""

    key: str
    name: str
    tags: tuple[str, ...]
    group: str
    aliases: tuple[str, ...] = ()


@dataclass
class EmojiNames:
    """CLDR names by code point key, and a lookup from any known name to the key."""

    by_key: dict[str, EmojiName]
    by_slug: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_emojibase(cls, root: Path) -> EmojiNames:
        """Read ``emojibase-data`` (``en/data.json``, shortcodes and the old Unicode names)."""
        groups = json.loads((root / "meta" / "groups.json").read_text())["groups"]
        old_names = {
            codepoint_key(k): v for k, v in json.loads((root / "meta" / "unicode-names.json").read_text()).items()
        }
        shortcodes: dict[str, list[str]] = {}
        for path in sorted((root / "en" / "shortcodes").glob("*.json")):
            for hexcode, codes in json.loads(path.read_text()).items():
                codes = [codes] if isinstance(codes, str) else codes
                shortcodes.setdefault(codepoint_key(hexcode), []).extend(codes)
        by_key = {}
        for entry in json.loads((root / "en" / "data.json").read_text()):
            key = codepoint_key(entry["hexcode"])
            if "group" not in entry or has_skin_tone(key):
                continue
            name = clean(entry["label"])
            aliases = [clean(a) for a in [old_names.get(key, ""), *shortcodes.get(key, [])]]
            by_key[key] = EmojiName(
                key=key,
                name=name,
                tags=tuple(dict.fromkeys(clean(t) for t in entry.get("tags", []) if clean(t) != name)),
                group=clean(groups[str(entry["group"])]),
                aliases=tuple(a for a in dict.fromkeys(aliases) if a and a != name),
            )
        names = cls(by_key)
        # CLDR names win over aliases when two emoji share a slug (e.g. an old name that is another's CLDR name)
        for entry in by_key.values():
            for alias in entry.aliases:
                names.by_slug.setdefault(slug(alias), entry.key)
        for entry in by_key.values():
            names.by_slug[slug(entry.name)] = entry.key
        return names

    def get(self, key: str) -> EmojiName | None:
        return self.by_key.get(codepoint_key(key))

    def find(self, *names: str) -> EmojiName | None:
        """The emoji a set names by one of ``names`` (CLDR name first, then old names and shortcodes)."""
        for name in names:
            key = self.by_slug.get(slug(name))
            if key is not None:
                return self.by_key[key]
        return None


def clean(text: str) -> str:
    """Lower case words separated by single spaces ("HEAVY_BLACK-heart" -> "heavy black heart")."""
    return " ".join(text.replace("_", " ").replace("-", " ").replace(":", " ").split()).lower()
