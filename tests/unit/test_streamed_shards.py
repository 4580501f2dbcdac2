"""Embedding shards read a block at a time (issue 24: memory does not grow with the corpus): the blocks, the
streamed centring and the block-wise exact search give what reading every shard at once gives; the index takes its
rows one batch at a time from a generator."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmretrieval.core.errors import IndexStoreError
from mmretrieval.core.shards import read_blocks
from mmretrieval.evaluation import centring
from mmretrieval.stages.publish import exact_top_k


def write_shards(folder: Path, vectors: np.ndarray, kinds: list[str], per_shard: int) -> list[str]:
    """Shards as embed's writer makes them: a pandas frame with one numpy vector per row, to parquet."""
    names = []
    for k, lo in enumerate(range(0, len(vectors), per_shard)):
        part = slice(lo, lo + per_shard)
        names.append(f"part-{k:05d}.parquet")
        pd.DataFrame({"id": [f"item{i:04d}" for i in range(len(vectors))][part], "modality": kinds[part],
                      "vector": list(vectors[part]), "model_version": "1", "data_version": "d"}
                     ).to_parquet(folder / names[-1], index=False)
    return names


def corpus(n: int = 230, dim: int = 12) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(n, dim)) + 1.5
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return vectors, [("audio", "image", "text")[i % 3] for i in range(n)]


def test_blocks_hold_at_most_their_rows_and_give_back_every_shard_in_order(tmp_path: Path) -> None:
    vectors, kinds = corpus()
    shards = write_shards(tmp_path, vectors, kinds, per_shard=70)
    blocks = list(read_blocks(tmp_path, shards, rows=25))
    assert max(b.rows for b in blocks) == 25 and len(blocks) == 3 * 3 + 1  # 3 shards of 25 + 25 + 20, then 20
    assert np.array_equal(np.concatenate([b.vectors for b in blocks]), vectors)
    assert [i for b in blocks for i in b.ids] == [f"item{i:04d}" for i in range(len(vectors))]
    assert [m for b in blocks for m in b.modalities] == kinds


def test_a_shard_with_vectors_of_two_lengths_is_named(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["a", "b"], "modality": ["image"] * 2,
                  "vector": [np.ones(4, np.float32), np.ones(3, np.float32)]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet: rows hold vectors of \[3, 4\] values"):
        list(read_blocks(tmp_path, ["p.parquet"]))


def test_the_streamed_centring_is_the_centring_of_all_rows_at_once(tmp_path: Path) -> None:
    vectors, kinds = corpus()
    at_once = centring.fit(vectors, kinds, ["audio", "image"], min_items=20)
    running = centring.RunningMeans(("audio", "image"), 20)
    for block in read_blocks(tmp_path, write_shards(tmp_path, vectors, kinds, per_shard=50), rows=17):
        running.add(block.vectors, block.modalities)
    streamed = running.centring()
    assert streamed.modalities == ["audio", "image"]
    for m in ("audio", "image"):  # the float32 mean of numpy over every row of the modality
        rows = np.asarray(kinds) == m
        assert np.allclose(streamed.means[m], vectors[rows].mean(axis=0), atol=1e-6)
        assert np.allclose(streamed.means[m], at_once.means[m], atol=1e-6)
    assert np.allclose(streamed.apply_rows(vectors, kinds), at_once.apply_rows(vectors, kinds), atol=1e-6)
    few = centring.RunningMeans(("text",), len(vectors))  # fewer texts than min_items: not centred
    few.add(vectors, kinds)
    assert few.centring().means == {}


def test_the_block_wise_exact_search_finds_the_top_k_of_a_search_over_all_rows(tmp_path: Path) -> None:
    vectors, kinds = corpus(n=400, dim=16)
    queries = vectors[np.random.default_rng(5).choice(len(vectors), size=30, replace=False)]
    ids = np.asarray([f"item{i:04d}" for i in range(len(vectors))])
    expected = [set(ids[row]) for row in np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    blocks = read_blocks(tmp_path, write_shards(tmp_path, vectors, kinds, per_shard=90), rows=7)
    found = exact_top_k(queries, blocks, 10)
    assert [set(f) for f in found] == expected and all(len(f) == 10 for f in found)


def test_the_index_draws_a_generators_rows_one_batch_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    from pymilvus import MilvusClient

    from mmretrieval.backends.index import MilvusIndex

    vectors, _ = corpus(n=23, dim=8)
    drawn: list[int] = []
    sent: list[tuple[int, int, int]] = []  # (rows in the request, rows drawn so far, row dicts alive)

    def rows(bad: int | None = None) -> Any:
        for i, v in enumerate(vectors):
            drawn.append(i)
            yield {"id": f"r{i}", "modality": "image", "vector": v.tolist(), "text": "t" * (70_000 if i == 4 else 3),
                   "path": "p" * (5000 if i == bad else 1), "label": "", "metadata": {"i": i},
                   "model_version": "1", "data_version": "d"}

    real = MilvusClient.insert

    def counted(self: Any, name: str, data: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        alive = sum(1 for o in gc.get_objects() if type(o) is dict and "data_version" in o and "vector" in o)
        sent.append((len(data), len(drawn), alive))
        return real(self, name, data, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "insert", counted)
    with MilvusIndex(str(tmp_path / "milvus.db")) as ix:
        ix.create("c", 8, {})
        assert list(ix.insert("c", rows(), batch=5)) == [5, 10, 15, 20, 23]
        assert [n for n, _, _ in sent] == [5, 5, 5, 5, 3]
        assert [d for _, d, _ in sent] == [5, 10, 15, 20, 23]  # drawn as sent, never ahead
        assert max(a for _, _, a in sent) <= 5  # no more row dicts alive than one batch
        assert ix.count("c") == 23
        long = ix.client.query("c", filter='id == "r4"', output_fields=["text"])[0]["text"]
        assert len(long.encode()) <= 65_535  # the display text was cut, not refused
        ix.drop("c")
        ix.create("c", 8, {})
        drawn.clear()
        with pytest.raises(IndexStoreError, match=r"row 'r12' does not fit collection 'c': field 'path' is 5000"):
            list(ix.insert("c", rows(bad=12), batch=5))
        assert len(drawn) == 15 and ix.count("c") == 10  # the batches before the bad row's went in


def finish_checks(tmp_path: Path, vectors: np.ndarray, kinds: list[str], clean_ids: list[str],
                  clean_kinds: list[str]) -> tuple[int, dict[str, int]]:
    """embed's finish checks on shards of 40 rows read in blocks, against a clean manifest of ``clean_ids``."""
    from mmretrieval.backends.tracking import ModelRef
    from mmretrieval.stages import embed

    write_shards(tmp_path, vectors, kinds, per_shard=40)
    clean = pd.DataFrame({"id": clean_ids, "modality": clean_kinds})
    p = embed.Plan("ds", ModelRef("m", "1", "run", "src"), "d", len(clean), 40, tmp_path / "v1", tmp_path, clean,
                   tmp_path)
    return embed._checked_shards(p)


def test_embeds_finish_checks_ids_norms_and_counts_shard_by_shard(tmp_path: Path) -> None:
    from mmretrieval.core.errors import ModelError

    vectors, kinds = corpus(n=110, dim=6)
    ids = [f"item{i:04d}" for i in range(110)]
    assert finish_checks(tmp_path, vectors, kinds, ids, kinds) == (6, {"audio": 37, "image": 37, "text": 36})
    swapped = ids[:50] + [ids[51], ids[50]] + ids[52:]
    with pytest.raises(ModelError, match="hold 110 rows that do not match the 110 clean items"):
        finish_checks(tmp_path, vectors, kinds, swapped, kinds)
    with pytest.raises(ModelError, match="hold 110 rows that do not match the 111 clean items"):
        finish_checks(tmp_path, vectors, kinds, [*ids, "item9999"], [*kinds, "text"])
    broken = vectors.copy()
    broken[[3, 75]] *= 2
    broken[90] = np.nan
    with pytest.raises(ModelError, match="3 embeddings of 'ds' are not unit vectors"):
        finish_checks(tmp_path, broken, kinds, ids, kinds)
    with pytest.raises(ModelError, match=r"embedded counts per modality .* differ from the clean counts"):
        finish_checks(tmp_path, vectors, kinds, ids, ["image"] * 110)
