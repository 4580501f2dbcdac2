"""Pairs of 64-bit codes within a Hamming distance, found without comparing every pair (multi-index hashing).

Pigeonhole: split the 64 bit positions into ``k`` bands. Two codes that differ in at most ``d`` bits differ in at
most ``d`` bands, so they agree exactly on at least ``k - d`` of them. One table per choice of ``k - d`` bands keys
every code by its bits there (``code & mask``); codes with equal keys are candidates, and each candidate pair is
verified exactly (popcount of the XOR). ``k`` is chosen for the least (tables x sorting + candidate pairs), the
candidates counted on a sample of the codes; ``k = d + 1`` is the classic one-band-must-match index. Work is
O(tables x (n log n + candidates)), candidates being about n^2 / 2^(key bits) for well-spread codes, not n^2 / 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from math import comb

import numpy as np

MAX_TABLES = 128  # band counts needing more tables are not tried (once one plan exists)
SAMPLE = 10_000  # codes sampled to count candidate pairs when choosing the band count


def _masks(k: int, d: int) -> list[int]:
    """One key mask per table: the bits of each choice of ``k - d`` of ``k`` interleaved bands."""
    bands = [sum(1 << i for i in range(64) if i % k == b) for b in range(k)]  # interleaved: neighbours split up
    return [sum(bands[b] for b in keep) for keep in combinations(range(k), k - d)]


def _pairs_in(keys: np.ndarray) -> int:
    """How many pairs of equal values ``keys`` holds."""
    _, counts = np.unique(keys, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _plan(codes: np.ndarray, max_distance: int) -> list[int]:
    """The key masks of the cheapest index for these codes: for each band count k, tables x sort work plus the
    candidate pairs, counted on a sample of the codes (real hashes crowd some buckets; uniform ones do not)."""
    d, n = max_distance, len(codes)
    if d >= 64:  # every pair is within reach: one table with an empty key
        return [0]
    sample = codes if n <= SAMPLE else np.random.default_rng(0).choice(codes, size=SAMPLE, replace=False)
    scale = (n / len(sample)) ** 2
    best: tuple[float, list[int]] | None = None
    for k in range(d + 1, 65):
        if comb(k, d) > MAX_TABLES and best is not None:
            break
        masks = _masks(k, d)
        candidates = sum(_pairs_in(sample & np.uint64(m)) for m in masks) * scale
        cost = len(masks) * n * 2.0 + candidates  # sorting a key costs about two candidate checks
        if best is None or cost < best[0]:
            best = (cost, masks)
        elif cost > 2 * best[0]:
            break
    return best[1] if best is not None else _masks(d + 1, d)


def _equal_key_pairs(keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Positions (a, b), a < b, of every pair of equal values in sorted ``keys``, in chunks of at most len(keys)."""
    n = len(keys)
    if n < 2:
        return
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    sizes = np.diff(np.append(starts, n))
    pos = np.flatnonzero(np.repeat(sizes > 1, sizes))  # members of runs of two or more
    end = np.repeat(starts + sizes, sizes)[pos]
    step = 1
    while pos.size:
        keep = pos + step < end
        pos, end = pos[keep], end[keep]
        if pos.size:
            yield pos, pos + step
        step += 1


def near_pairs(codes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of all ``codes`` (uint64, shape (n,)) whose Hamming distance is <= ``max_distance``
    (0..64), each pair once. Meant for distinct codes: n equal codes give all their n^2/2 pairs.
    Raises ValueError for a distance outside 0..64."""
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be within 0..64, got {max_distance}")
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    if len(codes) < 2:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    masks = _plan(codes, max_distance)
    mask_arr = np.array(masks, dtype=np.uint64)
    for t, mask in enumerate(mask_arr):
        keys = codes & mask
        order = np.argsort(keys, kind="stable")
        for a, b in _equal_key_pairs(keys[order]):
            i, j = order[a], order[b]
            diff = codes[i] ^ codes[j]
            ok = np.flatnonzero(np.bitwise_count(diff) <= max_distance)
            first = np.ones(len(ok), dtype=bool)
            for earlier in mask_arr[:t]:  # a pair is reported by the first table whose key it agrees on
                first &= (diff[ok] & earlier) != 0
            i, j = i[ok[first]], j[ok[first]]
            found_i.append(np.minimum(i, j))
            found_j.append(np.maximum(i, j))
    if not found_i:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)
