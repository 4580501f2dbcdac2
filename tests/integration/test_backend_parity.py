"""What the index does with deep searches, filters and rows that do not fit, on Milvus Lite here; the same checks run
against a real server in test_milvus_server.py (one outcome for both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmretrieval.backends.index import MilvusIndex
from mmretrieval.core.config import IndexParams
from mmretrieval.core.errors import FilterError, IndexStoreError, QueryError
from mmretrieval.core.schema import JSON_MAX_BYTES, VARCHAR_LIMITS
from mmretrieval.serving.filters import build_filter

pytestmark = pytest.mark.integration

ROWS, EF, DIM = 60, 16, 8
PARAMS = IndexParams(search_params={"ef": EF})
IVF = IndexParams(index_type="IVF_FLAT", build_params={"nlist": 16}, search_params={"nprobe": 1})


def make_rows(n: int = ROWS) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(n, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"id": f"item{i:03d}", "modality": "image" if i % 3 else "text", "vector": vectors[i].tolist(),
             "text": f"caption {i}", "path": f"p/{i}.png", "label": str(i % 10),
             "metadata": {"source": 'say "hi"' if i == 4 else "web", "photographer id": str(i % 2)},
             "model_version": "1", "data_version": "d"} for i in range(n)]


def filled(ix: MilvusIndex, name: str = "parity", params: IndexParams = PARAMS) -> list[dict[str, Any]]:
    rows = make_rows()
    if ix.exists(name):
        ix.drop(name)
    ix.create(name, DIM, {})
    list(ix.insert(name, rows))
    ix.build_index(name, params)
    ix.load(name)
    return rows


DEPTHS = (1, EF - 1, EF, EF + 1, ROWS, ROWS + 1, 1000)
EXPECTED_DEPTHS = [min(k, ROWS) for k in DEPTHS]
TEXT_ROWS = sum(1 for i in range(ROWS) if i % 3 == 0)  # make_rows: every third row is text


def check_depth(uri: str, params: IndexParams = PARAMS) -> list[int]:
    """k = 1, ef - 1, ef, ef + 1, rows, rows + 1: every one gets min(k, rows) distinct hits, best first (HNSW; and
    an IVF index probing one list)."""
    with MilvusIndex(uri) as ix:
        rows = filled(ix, params=params)
        query = [rows[0]["vector"]]
        for k in DEPTHS:
            hits = ix.search("parity", query, k, params, output_fields=["id"])[0]
            assert len(hits) == min(k, ROWS), f"k={k}: {len(hits)} hits"
            assert len({h["id"] for h in hits}) == len(hits) and hits[0]["id"] == "item000"
            scores = [h["score"] for h in hits]
            assert scores == sorted(scores, reverse=True)
        images = ix.search("parity", query, ROWS + 1, params, expr='modality == "image"', output_fields=["id"])[0]
        assert len(images) == sum(r["modality"] == "image" for r in rows)
        return [len(ix.search("parity", query, k, params, output_fields=["id"])[0]) for k in DEPTHS]


def check_filters(uri: str) -> int:
    """The modality restriction holds whatever the user's expression says; labels and metadata match exactly."""
    with MilvusIndex(uri) as ix:
        rows = filled(ix)
        query = [rows[1]["vector"]]

        def ids(expr: str) -> set[str]:
            return {h["id"] for h in ix.search("parity", query, ROWS, PARAMS, expr=expr, output_fields=["id"])[0]}

        def expected(keep: Any) -> set[str]:
            return {r["id"] for r in rows if keep(r)}

        assert ids(build_filter("text", 'label == "7" or label == "1"')) == expected(
            lambda r: r["modality"] == "text" and r["label"] in ("7", "1"))
        assert ids(build_filter("image", "", ["7", "1"])) == expected(
            lambda r: r["modality"] == "image" and r["label"] in ("7", "1"))
        assert ids(build_filter(where={"source": 'say "hi"'})) == {"item004"}
        assert ids(build_filter(where={"photographer id": "1"}, labels=["3"])) == expected(
            lambda r: r["label"] == "3" and int(r["id"][4:]) % 2 == 1)
        assert ids(build_filter(labels=['" or modality != "'])) == set()  # an injection attempt matches nothing
        for bad in ('label == ', 'nofield == "1"', "modality == 'text' or"):
            with pytest.raises(FilterError, match="not a valid Milvus expression"):
                ix.search("parity", query, 5, PARAMS, expr=build_filter("text", bad))
        with pytest.raises(QueryError, match="leaves 1 bracket"):  # refused before Milvus sees it
            build_filter("text", "label in [")
        return len(ids(build_filter("text")))  # every text row passes a bare modality restriction


def check_limits(uri: str) -> int:
    """Rows beyond the schema's limits are refused before anything is inserted, naming the row; alike on both."""
    long_id = "x" * 665
    cases = [
        ({"id": long_id}, f"'{'x' * 80}'.*'id' is 665 bytes, above its {VARCHAR_LIMITS['id']}-byte limit"),
        ({"id": "é" * 300}, "'id' is 600 bytes"),  # 300 characters, 600 bytes: bytes count
        ({"metadata": {"notes": "n" * 70_000}}, f"metadata is 70013 bytes of JSON, above the {JSON_MAX_BYTES}"),
        ({"label": "a\x00b"}, "'label' contains a NUL character"),
        ({"path": "p" * 5000}, "'path' is 5000 bytes, above its 4096-byte limit"),
    ]
    with MilvusIndex(uri) as ix:
        for change, words in cases:
            rows = make_rows(3)
            rows[1].update(change)
            if ix.exists("limits"):
                ix.drop("limits")
            ix.create("limits", DIM, {})
            with pytest.raises(IndexStoreError, match=words):
                list(ix.insert("limits", rows))
            assert int(ix.client.get_collection_stats("limits")["row_count"]) == 0  # nothing half-inserted
        rows = make_rows(3)
        rows[2]["vector"] = rows[2]["vector"][:4]  # a remaining Milvus error: one message naming the batch's ids
        with pytest.raises(IndexStoreError, match=r"insert into 'limits' failed for the batch of rows 1-3 "
                                                  r"\(ids 'item000' \.\. 'item002'\)"):
            list(ix.insert("limits", rows))
        ix.drop("limits")
        return len(cases) + 1  # refusals seen


@pytest.fixture
def lite(tmp_path: Path) -> str:
    return str(tmp_path / "milvus.db")


def test_search_depth_covers_k_at_the_edges_of_ef_and_of_the_collection_on_lite(lite: str) -> None:
    assert check_depth(lite) == check_depth(lite, IVF) == EXPECTED_DEPTHS


def test_filters_mean_what_they_say_on_lite(lite: str) -> None:
    assert check_filters(lite) == TEXT_ROWS


def test_rows_beyond_the_schema_limits_are_refused_naming_the_row_on_lite(lite: str) -> None:
    assert check_limits(lite) == 6
