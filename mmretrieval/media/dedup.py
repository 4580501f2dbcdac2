"""Duplicate detection (pure functions): exact (sha256) and near-duplicate images (64-bit difference hash).

Items are grouped with union-find; in each group the first item (manifest order) survives, the others merge into
it. A group that spanned several splits is split leakage; it is resolved by the merge (one item, one split) and
reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


MAX_COLOUR_DISTANCE = 24.0  # mean-RGB distance (0-255 scale) above which two images never count as near-duplicates
MIN_SIDE = 64  # smaller images (icons, 32 px CIFAR, upscaled 8x8 digits) carry too little detail for a 64-bit hash


@dataclass(frozen=True)
class ImageHash:
    bits: int  # 64-bit difference hash: structure, blind to colour
    colour: tuple[float, float, float]  # mean RGB: tells a red square from a blue one
    min_side: int = MIN_SIDE  # of the image hashed; below MIN_SIDE only exact duplicates count
    blank: bool = False  # a (near-)constant picture (media.image.is_blank): only exact duplicates count


def dhash(image: Image.Image) -> ImageHash:
    """Difference hash (9x8 greyscale, one bit per horizontal neighbour comparison) plus the mean colour."""
    from PIL import Image

    from mmretrieval.media.image import is_blank

    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    mean = np.asarray(image.convert("RGB").resize((8, 8), Image.Resampling.BOX), dtype=np.float64).mean(axis=(0, 1))
    return ImageHash(int(sum(1 << i for i, b in enumerate(bits) if b)),
                     (float(mean[0]), float(mean[1]), float(mean[2])), min(image.size), is_blank(image.convert("RGB")))


@dataclass(frozen=True)
class Merge:
    index: int  # row that disappears
    into: int  # row that survives
    reason: str  # "exact_duplicate" or "near_duplicate"
    distance: int  # Hamming distance of the image hashes (0 for exact)


def find_duplicates(hashes: Sequence[str], phashes: Sequence[ImageHash | None], max_distance: int,
                    labels: Sequence[str] | None = None) -> list[Merge]:
    """Rows with equal ``hashes`` (non-empty), or images of at least MIN_SIDE pixels whose difference hashes are within
    ``max_distance`` bits and whose mean colours are close, are one group (never a blank picture's: all blanks hash
    alike). Rows with different non-empty
    ``labels`` are never merged as near-duplicates."""
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the earliest row is the root, so it survives

    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h:
            if h in first:
                union(first[h], i)
            else:
                first[h] = i
    # a blank picture's hash says nothing about its content: distinct items would merge through it
    images = [i for i, p in enumerate(phashes) if p is not None and p.min_side >= MIN_SIDE and not p.blank]
    labs = np.array(list(labels) if labels is not None else [""] * n, dtype=object)
    if max_distance >= 0 and len(images) > 1:
        codes = np.array([phashes[i].bits for i in images], dtype=np.uint64)  # type: ignore[union-attr]
        colours = np.array([phashes[i].colour for i in images])  # type: ignore[union-attr]
        for a in range(len(images) - 1):
            x = np.bitwise_xor(codes[a + 1:], codes[a])
            dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
            close = np.linalg.norm(colours[a + 1:] - colours[a], axis=1) <= MAX_COLOUR_DISTANCE
            others = labs[images[a + 1:]] if len(images) > a + 1 else labs[:0]
            same_label = (others == labs[images[a]]) | (others == "") | (labs[images[a]] == "")
            for b in np.nonzero((dist <= max_distance) & close & same_label)[0]:
                union(images[a], images[a + 1 + int(b)])
    merges = []
    for i in range(n):
        root = find(i)
        if root != i:
            exact = bool(hashes[i]) and hashes[i] == hashes[root]
            pi, pr = phashes[i], phashes[root]
            dist = 0 if exact or pi is None or pr is None else bin(pi.bits ^ pr.bits).count("1")
            merges.append(Merge(i, root, "exact_duplicate" if exact else "near_duplicate", dist))
    return merges
