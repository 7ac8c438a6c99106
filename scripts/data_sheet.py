"""Draw a few emoji concepts in every art style of the prepared set (docs/images/emoji-styles.png).

    python scripts/data_sheet.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = {"2764": "red heart", "1f355": "pizza", "1f6b2": "bicycle", "1f600": "grinning face", "2600": "sun"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "data" / "emoji"), help="prepared emoji folder")
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "emoji-styles.png"))
    args = parser.parse_args()
    records = [json.loads(line) for line in Path(args.data, "records.jsonl").read_text().splitlines()]
    images = np.load(Path(args.data, "images-64.npy"), mmap_mode="r")
    styles = list(dict.fromkeys(r["source"] for r in records if r["kind"] == "emoji"))
    where = {(r["concept"], r["source"]): i for i, r in enumerate(records)}
    cell, label = 64, 150
    sheet = Image.new("RGB", (label + cell * len(styles), 20 + cell * len(CONCEPTS)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, style in enumerate(styles):
        draw.text((label + column * cell + 2, 4), style[:10], fill="black")
    for row, (concept, name) in enumerate(CONCEPTS.items()):
        top = 20 + row * cell
        draw.text((4, top + cell // 2 - 6), f'"{name}"', fill="black")
        for column, style in enumerate(styles):
            if (concept, style) in where:
                sheet.paste(Image.fromarray(np.asarray(images[where[(concept, style)]])), (label + column * cell, top))
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
