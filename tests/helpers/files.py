"""Media files and manifests written for a test: images, hostile image headers, manifest CSVs and small datasets."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

# The tiny dataset's four classes: a coloured square each
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
MANIFEST_COLUMNS = ["id", "modality", "path", "text", "label", "split"]


def write_png(path: Path, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30),
              mode: str = "RGB") -> Path:
    """A ``size`` (width, height) PNG of one ``color`` (RGB; other modes are left at Pillow's default fill) with a
    square of a lighter or darker shade in its middle: a picture, not a blank (validation quarantines constant
    pictures as ``blank_image``); its corners keep ``color``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new(mode, size, color if mode == "RGB" else None)
    if mode == "RGB":
        w, h = size
        side = max(1, min(w, h) // 2)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        im.paste(tuple(c + 60 if c < 128 else c - 60 for c in color), box)
    im.save(path)
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A tiny 8-bit grey PNG whose header claims ``width`` x ``height`` pixels over a few bytes of image data: a
    decompression bomb to anyone who decodes it, about 80 bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(
        b"IEND", b"")


def write_manifest(folder: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    """``folder/manifest.csv`` with ``columns`` (default :data:`MANIFEST_COLUMNS`); a row's missing fields are
    empty and its extra keys are dropped."""
    columns = columns or MANIFEST_COLUMNS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return path


def tiny_dataset(src: Path, per_color: int = 4) -> Path:
    """The tiny dataset under ``src``: ``per_color`` squares of each of :data:`COLORS` (36+i by 36 pixels, a shade
    lighter each), item 0 of a colour in the test split, item 1 in val, the rest in train; two captions each.
    Returns its manifest."""
    rows = []
    for name, rgb in COLORS.items():
        for i in range(per_color):
            rel = f"images/{name}{i}.png"
            write_png(src / rel, size=(36 + i, 36), color=tuple(min(255, c + 6 * i) for c in rgb))
            split = "test" if i == 0 else ("val" if i == 1 else "train")
            rows.append({"id": f"{name}{i}", "modality": "image", "path": rel, "split": split,
                         "text": f"a {name} square ||| something {name}", "label": name})
    return write_manifest(src, rows)


def good_rows(src: Path, n: int = 4) -> list[dict[str, str]]:
    """``n`` valid image rows (``ok0``..) with their PNGs written under ``src/images``; no split, no label."""
    rows = []
    for i in range(n):
        write_png(src / "images" / f"ok{i}.png", color=(i * 40, 100, 50))
        rows.append({"id": f"ok{i}", "modality": "image", "path": f"images/ok{i}.png", "text": f"picture {i}"})
    return rows
