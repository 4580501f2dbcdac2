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


class _Forest:
    """Union-find over rows whose root is always the smallest row of its group (so the first row survives)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def roots(self) -> np.ndarray:
        """The root of every row, shape (n,)."""
        parent = np.array(self.parent, dtype=np.int64)
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                return parent
            parent = up


def find_duplicates(hashes: Sequence[str], phashes: Sequence[ImageHash | None], max_distance: int,
                    labels: Sequence[str] | None = None) -> list[Merge]:
    """Rows with equal ``hashes`` (non-empty), or images of at least MIN_SIDE pixels whose difference hashes are within
    ``max_distance`` bits and whose mean colours are close, are one group (never through a blank picture's hash: all
    blanks hash alike). Rows with different non-empty ``labels`` are never merged as near-duplicates.
    ``max_distance`` -1 merges exact duplicates only.

    Groups are the connected components of those pairwise links, the same as comparing every pair, but found with a
    multi-index over the hashes (:mod:`mmretrieval.media.hamming`): near-linear in the number of rows. Returns one
    :class:`Merge` per row that is not the first of its group, in row order."""
    n = len(hashes)
    forest = _Forest(n)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h:
            if h in first:
                forest.union(first[h], i)
            else:
                first[h] = i
    # a blank picture's hash says nothing about its content: distinct items would merge through it
    images = [i for i, p in enumerate(phashes) if p is not None and p.min_side >= MIN_SIDE and not p.blank]
    if max_distance >= 0 and len(images) > 1:
        _NearLinks(images, phashes, labels, forest).link(min(max_distance, 64))
    roots = forest.roots()
    merges = []
    for i in np.flatnonzero(roots != np.arange(n)).tolist():
        root = int(roots[i])
        exact = bool(hashes[i]) and hashes[i] == hashes[root]
        pi, pr = phashes[i], phashes[root]
        dist = 0 if exact or pi is None or pr is None else bin(pi.bits ^ pr.bits).count("1")
        merges.append(Merge(i, root, "exact_duplicate" if exact else "near_duplicate", dist))
    return merges


_CELL = 13.8  # colour-grid cell side: two colours in one cell are < 24 apart (13.8 * sqrt(3) = 23.9)
_OFFSETS = [(a, b, c) for a in range(-2, 3) for b in range(-2, 3) for c in range(-2, 3)]  # 24 = 1.74 cells
_SMALL = 4096  # item pairs up to which two groups of equal hashes are compared item by item
_BATCH = 1 << 21  # item pairs compared at once


class _NearLinks:
    """Links near-duplicate images into a :class:`_Forest`: hashes within the distance, colours within
    MAX_COLOUR_DISTANCE, labels equal or one empty. Items with the same hash bits form a group; pairs of groups come
    from the multi-index, and big groups (thousands of flat pictures hash alike) are compared through a colour grid
    whose cells are cliques, so the work stays bounded by the items, not their pairs."""

    def __init__(self, images: list[int], phashes: Sequence[ImageHash | None], labels: Sequence[str] | None,
                 forest: _Forest) -> None:
        self.rows, self.forest = np.array(images, dtype=np.int64), forest
        hashed = [phashes[i] for i in images]
        self.codes = np.array([p.bits for p in hashed], dtype=np.uint64)  # type: ignore[union-attr]
        self.colours = np.array([p.colour for p in hashed], dtype=np.float64)  # type: ignore[union-attr]
        ids: dict[object, int] = {"": 0}  # 0: no label, compatible with every label
        self.labels = np.array([ids.setdefault(labels[i], len(ids)) if labels is not None else 0 for i in images],
                               dtype=np.int64)
        self.cells = np.floor(self.colours / _CELL).astype(np.int64)

    def link(self, max_distance: int) -> None:
        from mmretrieval.media.hamming import near_pairs

        uniq, inverse = np.unique(self.codes, return_inverse=True)
        self.order = np.argsort(inverse, kind="stable")  # items grouped by hash, groups in hash order
        self.counts = np.bincount(inverse, minlength=len(uniq))
        self.starts = np.concatenate(([0], np.cumsum(self.counts)[:-1]))
        multi = np.flatnonzero(self.counts > 1)
        self._pairs_of_groups(multi, multi, same=True)
        if max_distance > 0:
            p, q = near_pairs(uniq, max_distance)
            self._pairs_of_groups(p, q, same=False)

    def _members(self, g: int) -> np.ndarray:
        return self.order[self.starts[g]:self.starts[g] + self.counts[g]]

    def _pairs_of_groups(self, p: np.ndarray, q: np.ndarray, same: bool) -> None:
        """Link the items of groups ``p[k]`` and ``q[k]`` (hashes within the distance; the same group when
        ``same``): small pairs item by item, vectorised in batches; big ones through the colour grid."""
        sizes = self.counts[p] * self.counts[q]
        big = sizes > _SMALL
        for g, h in zip(p[big].tolist(), q[big].tolist(), strict=True):
            self._dense(self._members(g), self._members(h), same)
        p, q, sizes = p[~big], q[~big], sizes[~big]
        bounds = np.searchsorted(np.cumsum(sizes), np.arange(1, 1 + int(sizes.sum()) // _BATCH) * _BATCH)
        for lo, hi in zip(np.concatenate(([0], bounds)), np.append(bounds, len(p)), strict=True):
            if hi > lo:
                self._item_pairs(p[lo:hi], q[lo:hi], same)

    def _item_pairs(self, p: np.ndarray, q: np.ndarray, same: bool) -> None:
        """Every item of group ``p[k]`` against every item of group ``q[k]``; the links go into the forest."""
        sp, sq = self.counts[p], self.counts[q]
        sizes = sp * sq
        pair = np.repeat(np.arange(len(p)), sizes)
        local = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        ia, ib = local // sq[pair], local % sq[pair]
        if same:
            keep = ia < ib
            pair, ia, ib = pair[keep], ia[keep], ib[keep]
        a, b = self.order[self.starts[p[pair]] + ia], self.order[self.starts[q[pair]] + ib]
        ok = self._ok(a, b)
        rows, union = self.rows, self.forest.union
        for x, y in zip(rows[a[ok]].tolist(), rows[b[ok]].tolist(), strict=True):
            union(x, y)

    def _ok(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether items ``a[k]`` and ``b[k]`` (hashes already close) link: colour and label rules."""
        la, lb = self.labels[a], self.labels[b]
        ok = (la == lb) | (la == 0) | (lb == 0)
        both = np.flatnonzero(ok)
        ok[both] = np.linalg.norm(self.colours[a[both]] - self.colours[b[both]], axis=-1) <= MAX_COLOUR_DISTANCE
        return ok

    def _nodes(self, items: np.ndarray) -> dict[tuple[int, int, int, int], np.ndarray]:
        """``items`` by (label, colour cell): within a group of equal hashes each node is a clique."""
        keys = np.column_stack([self.labels[items], self.cells[items]])
        uniq, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        parts = np.split(items[np.argsort(inverse.ravel(), kind="stable")], np.cumsum(counts)[:-1])
        return {tuple(int(v) for v in key): part for key, part in zip(uniq, parts, strict=True)}

    def _dense(self, a: np.ndarray, b: np.ndarray, same: bool) -> None:
        forest, rows = self.forest, self.rows
        nodes_a = self._nodes(a)
        nodes_b = nodes_a if same else self._nodes(b)
        if same:  # a cell of one label and one hash is a clique (colours < 24 apart)
            for items in nodes_a.values():
                for i in items[1:].tolist():
                    forest.union(int(rows[items[0]]), int(rows[i]))
        by_cell: dict[tuple[int, int, int], list[tuple[int, np.ndarray]]] = {}
        for (label, *cell), items in nodes_b.items():
            by_cell.setdefault((cell[0], cell[1], cell[2]), []).append((label, items))
        for (la, ca0, ca1, ca2), ia in nodes_a.items():
            for o0, o1, o2 in _OFFSETS:
                for lb, ib in by_cell.get((ca0 + o0, ca1 + o1, ca2 + o2), ()):
                    if (la != lb and la and lb) or (same and ib is ia):
                        continue
                    ra, rb = int(rows[ia[0]]), int(rows[ib[0]])
                    if forest.find(ra) != forest.find(rb) and self._any_close(ia, ib):
                        forest.union(ra, rb)

    def _any_close(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether some colour of ``a`` lies within MAX_COLOUR_DISTANCE of some colour of ``b`` (blocks of rows)."""
        cb = self.colours[b]
        step = max(1, _SMALL * 64 // len(b))
        for s in range(0, len(a), step):
            ca = self.colours[a[s:s + step]]
            if (np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1) <= MAX_COLOUR_DISTANCE).any():
                return True
        return False
