"""Near-duplicate search (``media.dedup.find_duplicates``) at up to 1M image hashes: seconds and groups found.

    PYTHONPATH=. nice .venv/bin/python bench/dedup.py --items 1000000 --distance 4

Generated hashes (no pictures decoded: the search is what is timed), two corpora:

* ``spread``: random 64-bit hashes; 5 % near copies of an earlier item (1-4 bits flipped, colour nudged), 2 % with
  the same hash and another colour, 1 % flat pictures (hash 0, random colour), labels empty or one of 10 classes.
* ``clustered``: every hash a variant (0-12 bits flipped) of one of N/500 seeds, like a corpus of many near-identical
  shots: the multi-index meets crowded buckets.

``--check N`` also runs the all-pairs search on the first N items of each corpus (O(N^2)) and says whether the groups
are identical (tests/unit/test_dedup.py holds the reference; this takes its inputs from here).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mmretrieval.media.dedup import ImageHash, find_duplicates


def _flip(rng: np.random.Generator, codes: np.ndarray, max_flips: int, min_flips: int = 0) -> np.ndarray:
    out = codes.copy()
    flips = rng.integers(min_flips, max_flips + 1, size=len(codes))
    for k in range(1, max_flips + 1):
        rows = np.flatnonzero(flips >= k)
        out[rows] ^= np.left_shift(np.uint64(1), rng.integers(0, 64, size=len(rows)).astype(np.uint64))
    return out


def corpus(kind: str, n: int, seed: int = 0) -> tuple[list[str], list[ImageHash | None], list[str]]:
    """(sha256 stand-ins, image hashes, labels) for ``n`` items of corpus ``kind`` ("spread" or "clustered")."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 255, size=(n, 3))
    if kind == "spread":
        codes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
        roll = rng.random(n)
        src = (rng.random(n) * np.arange(n)).astype(np.int64)  # an earlier item
        near, same, flat = roll < 0.05, (roll >= 0.05) & (roll < 0.07), (roll >= 0.07) & (roll < 0.08)
        codes[near] = _flip(rng, codes[src[near]], 4, 1)
        colours[near] = np.clip(colours[src[near]] + rng.normal(0, 6, size=(int(near.sum()), 3)), 0, 255)
        codes[same] = codes[src[same]]
        codes[flat] = 0
    else:
        seeds = rng.integers(0, 2**64 - 1, size=max(1, n // 500), dtype=np.uint64, endpoint=True)
        codes = _flip(rng, seeds[rng.integers(0, len(seeds), size=n)], 12)
    labels = [str(v) if v < 10 else "" for v in rng.integers(0, 20, size=n).tolist()]
    phashes: list[ImageHash | None] = [ImageHash(int(b), (float(c[0]), float(c[1]), float(c[2])), 256)
                                       for b, c in zip(codes.tolist(), colours.tolist(), strict=True)]
    return [f"sha{i}" for i in range(n)], phashes, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--distance", type=int, default=4, help="clean.near_duplicate_distance (default 4)")
    ap.add_argument("--kinds", nargs="+", default=["spread", "clustered"])
    ap.add_argument("--check", type=int, default=0, help="compare with the all-pairs search on this many items")
    args = ap.parse_args()
    for kind in args.kinds:
        for n in args.items:
            hashes, phashes, labels = corpus(kind, n)
            started = time.perf_counter()
            merges = find_duplicates(hashes, phashes, args.distance, labels)
            seconds = time.perf_counter() - started
            print(json.dumps({"corpus": kind, "items": n, "distance": args.distance, "seconds": round(seconds, 2),
                              "merged": len(merges), "groups": len({m.into for m in merges})}), flush=True)
        if args.check:
            _check(kind, args.check, args.distance)


def _check(kind: str, n: int, distance: int) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tests" / "unit" / "test_dedup.py"
    spec = importlib.util.spec_from_file_location("test_dedup", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    hashes, phashes, labels = corpus(kind, n)
    started = time.perf_counter()
    want = module.exhaustive(hashes, phashes, distance, labels)
    seconds = time.perf_counter() - started
    same = find_duplicates(hashes, phashes, distance, labels) == want
    print(json.dumps({"corpus": kind, "items": n, "all_pairs_seconds": round(seconds, 2), "identical": same}))


if __name__ == "__main__":
    main()
