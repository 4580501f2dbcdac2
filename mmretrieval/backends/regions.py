"""The region store: each item's projected region features, written at embed time, read at query time by id.

Layout of a store folder (next to the embedding shards of one model version)::

    regions/
      store.json              {"format": 1, "regions": R, "dim": d, "dtype": "float16", "shards": [...],
                               "rows": N, "reranker": {...}}  (written last: its presence means complete)
      regions-00000.npy       (rows, R, d) float16, memory-mapped when read
      ids-00000.json          the item id of each row, in order

Only the items of the re-ranker's modality have regions; R x d x 2 bytes per item. Images with concept regions
(the default): 3 x 3 x 384 x 2 = 6,912 bytes (6.9 GB at one million items); with the 7 x 7 cells of the backbone's
feature map after the learned projection: 49 x 128 x 2 = 12,544 bytes (12.5 GB at 1M). Audio: the audio tower's
4 frames after the learned projection, 4 x 128 x 2 = 1,024 bytes (1 GB at 1M). Beside that, an item's vector in
Milvus takes 384 x 4 = 1,536 bytes. :func:`RegionStore.lookup` maps ids to rows through a dict
built from the id files (a few tens of MB at 1M items) and reads only the rows it needs from the memory maps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmretrieval.core.errors import ModelError

FORMAT = 1
STORE_FILE = "store.json"


def shard_files(folder: Path, k: int) -> tuple[Path, Path]:
    return folder / f"regions-{k:05d}.npy", folder / f"ids-{k:05d}.json"


def write_shard(folder: Path, k: int, ids: Sequence[str], regions: np.ndarray) -> None:
    """Write shard ``k``: ``regions`` (rows, R, d) (cast to float16) for ``ids`` (rows,), atomically (a killed
    write leaves no shard). Raises :class:`ModelError` when the counts differ."""
    if regions.ndim != 3 or len(regions) != len(ids):
        raise ModelError(f"region shard {k}: {len(ids)} ids for regions of shape {regions.shape}; expected "
                         "(rows, regions, dim) with one row per id")
    folder.mkdir(parents=True, exist_ok=True)
    arrays, names = shard_files(folder, k)
    tmp = arrays.with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, regions.astype(np.float16), allow_pickle=False)
    names.write_text(json.dumps(list(ids)), encoding="utf-8")
    tmp.replace(arrays)


def finish(folder: Path, shards: int, reranker: dict[str, Any]) -> dict[str, Any]:
    """Check that shards ``0..shards-1`` are all there with one shape, then write ``store.json``. Returns it.
    Raises :class:`ModelError` naming a missing shard or a shape that differs."""
    shape: tuple[int, ...] | None = None
    rows = 0
    for k in range(shards):
        arrays, names = shard_files(folder, k)
        if not arrays.is_file() or not names.is_file():
            raise ModelError(f"region store {folder} lacks shard {k} ({arrays.name}): run embed again")
        a = np.load(arrays, mmap_mode="r", allow_pickle=False)
        if shape is not None and a.shape[1:] != shape:
            raise ModelError(f"region shard {k} has rows of shape {a.shape[1:]}, shard 0 {shape}")
        shape = a.shape[1:]
        rows += a.shape[0]
    regions, dim = shape if shape else (0, 0)
    meta = {"format": FORMAT, "regions": int(regions), "dim": int(dim), "dtype": "float16",
            "shards": [shard_files(folder, k)[0].name for k in range(shards)], "rows": rows,
            "bytes_per_item": int(regions) * int(dim) * 2, "reranker": reranker}
    (folder / STORE_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


class RegionStore:
    """Read side: ``lookup(ids)`` -> (N, R, d) float16 regions, via memory maps (no media decoding)."""

    def __init__(self, folder: Path) -> None:
        meta_path = folder / STORE_FILE
        if not meta_path.is_file():
            raise ModelError(f"{folder} is not a finished region store (no {STORE_FILE}): run embed with a "
                             "re-ranker, or search with rerank=0")
        self.folder = folder
        self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        self.arrays = [np.load(folder / name, mmap_mode="r", allow_pickle=False) for name in self.meta["shards"]]
        self.where: dict[str, tuple[int, int]] = {}
        for k in range(len(self.arrays)):
            ids = json.loads(shard_files(folder, k)[1].read_text(encoding="utf-8"))
            self.where.update({i: (k, row) for row, i in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.where)

    def missing(self, ids: Sequence[str]) -> list[str]:
        """The ids of ``ids`` that have no regions here."""
        return [i for i in ids if i not in self.where]

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """(N,) item ids -> (N, R, d) float16 regions in that order. Raises :class:`ModelError` naming the first
        few ids that are not in the store."""
        lacking = self.missing(ids)
        if lacking:
            raise ModelError(f"{len(lacking)} item(s) have no regions in {self.folder}, e.g. {lacking[:3]}")
        out = np.empty((len(ids), self.meta["regions"], self.meta["dim"]), dtype=np.float16)
        for n, i in enumerate(ids):
            k, row = self.where[i]
            out[n] = self.arrays[k][row]
        return out


REGIONS = "mmr.regions"  # collection property: the folder of its region store (re-ranking), when it has one
