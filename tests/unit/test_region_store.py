"""The region store of the re-ranker: completeness and lookup by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmretrieval.backends.regions import RegionStore, finish, write_shard
from mmretrieval.core.errors import ModelError


def test_region_store_looks_up_rows_by_id_across_shards(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    b = -np.ones((1, 3, 4), dtype=np.float32)
    write_shard(tmp_path, 0, ["x", "y"], a)
    write_shard(tmp_path, 1, ["z"], b)
    meta = finish(tmp_path, 2, {"model_version": "1"})
    assert meta["rows"] == 3 and meta["bytes_per_item"] == 3 * 4 * 2
    store = RegionStore(tmp_path)
    got = store.lookup(["z", "x"])
    assert got.dtype == np.float16 and got.shape == (2, 3, 4)
    assert np.array_equal(got[0], b[0]) and np.array_equal(got[1], a[0])
    assert store.missing(["x", "q"]) == ["q"]
    with pytest.raises(ModelError, match="'q'"):
        store.lookup(["x", "q"])


def test_region_store_is_incomplete_until_every_shard_is_written(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, ["x"], np.zeros((1, 3, 4)))
    with pytest.raises(ModelError, match="not a finished region store"):
        RegionStore(tmp_path)
    with pytest.raises(ModelError, match="lacks shard 1"):
        finish(tmp_path, 2, {})
    with pytest.raises(ModelError, match="2 ids"):
        write_shard(tmp_path, 1, ["y", "w"], np.zeros((1, 3, 4)))
