"""The re-ranker's gate (paired bootstrap over queries) and the region store (completeness, lookup by id)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmretrieval.config import RerankParams
from mmretrieval.errors import ModelError
from mmretrieval.regions import RegionStore, finish, write_shard
from mmretrieval.rerank import bootstrap_gate

GATE = RerankParams(bootstrap=500, seed=0)


def test_gate_refuses_a_reranker_that_does_not_help() -> None:
    rng = np.random.default_rng(0)
    dual = (rng.random(300) < 0.2).astype(float)
    same = dual.copy()
    assert not bootstrap_gate(dual, same, GATE).promote
    # a re-ranker that fixes 3 queries and breaks 2 of 300 is within the noise
    noisy = dual.copy()
    noisy[np.flatnonzero(dual == 0)[:3]] = 1
    noisy[np.flatnonzero(dual == 1)[:2]] = 0
    decision = bootstrap_gate(dual, noisy, GATE)
    assert not decision.promote and decision.low <= 0 < decision.high
    assert "does not clear" in decision.reasons[0]


def test_gate_passes_a_clear_gain_and_reports_its_interval() -> None:
    rng = np.random.default_rng(0)
    dual = (rng.random(300) < 0.2).astype(float)
    better = dual.copy()
    better[np.flatnonzero(dual == 0)[:30]] = 1  # +10 points, never worse
    decision = bootstrap_gate(dual, better, GATE)
    assert decision.promote and decision.gain == pytest.approx(0.1)
    assert 0 < decision.low < 0.1 < decision.high


def test_gate_needs_a_gain_above_min_gain() -> None:
    dual = np.zeros(200)
    better = dual.copy()
    better[:20] = 1  # +10 points
    assert not bootstrap_gate(dual, better, RerankParams(bootstrap=300, min_gain=0.2)).promote


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
