"""Search modes without Milvus: the fusion arithmetic on hand-made lists, the params that steer it, the request
checks, and the page's mode select."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from mmretrieval.backends.index import milvus_version
from mmretrieval.core.errors import QueryError
from mmretrieval.core.params import HybridParams, IndexParams
from mmretrieval.core.settings import get_settings
from mmretrieval.serving.client import Query
from mmretrieval.serving.http import ServiceConfig, create_app
from mmretrieval.serving.hybrid import fuse


def hits(*pairs: tuple[str, float]) -> list[dict[str, object]]:
    return [{"id": i, "score": s} for i, s in pairs]


NEAR = hits(("a", 0.9), ("b", 0.5), ("c", 0.1))  # vector ranks a 1, b 2, c 3
WORDS = hits(("c", 7.0), ("d", 3.0), ("b", 1.0))  # BM25 ranks c 1, d 2, b 3


def ids(rows: list[dict[str, object]]) -> list[str]:
    return [str(r["id"]) for r in rows]


def test_rrf_sums_weighted_reciprocal_ranks() -> None:
    # k=60: c 1/63+1/61=.03227  b 1/62+1/63=.03200  a 1/61=.01639  d 1/62=.01613
    fused = fuse(NEAR, WORDS, HybridParams(), 4)
    assert ids(fused) == ["c", "b", "a", "d"]
    assert fused[0]["score"] == pytest.approx(1 / 63 + 1 / 61)
    # vector weight 3: a 3/61=.0492  b 3/62+1/63=.0643  c 3/63+1/61=.0640  d 1/62
    assert ids(fuse(NEAR, WORDS, HybridParams(vector_weight=3.0), 4)) == ["b", "c", "a", "d"]
    assert ids(fuse(NEAR, WORDS, HybridParams(keyword_weight=0.0), 4)) == ["a", "b", "c", "d"]


def test_weighted_fusion_min_max_normalises_each_list() -> None:
    # vector (s - .1) / .8: a 1, b .5, c 0; BM25 (s - 1) / 6: c 1, d 1/3, b 0 -> a 1, c 1 (tie: a is better ranked
    # by the vector list), b .5, d .333
    fused = fuse(NEAR, WORDS, HybridParams(fusion="weighted"), 4)
    assert ids(fused) == ["a", "c", "b", "d"] and [round(float(r["score"]), 4) for r in fused] == [1, 1, 0.5, 0.3333]
    # keyword weight 2: c 2, a 1, b .5, d .667
    assert ids(fuse(NEAR, WORDS, HybridParams(fusion="weighted", keyword_weight=2.0), 4)) == ["c", "a", "d", "b"]


def test_an_item_without_text_stands_in_its_vector_part_and_no_word_hit_means_the_vector_order() -> None:
    # a has no text: k=60, a 2/61=.0328 > c .03227 > b .03200 > d
    assert ids(fuse(NEAR, WORDS, HybridParams(), 4, textless=frozenset({"a"}))) == ["a", "c", "b", "d"]
    assert ids(fuse(NEAR, [], HybridParams(), 2)) == ["a", "b"]
    assert ids(fuse(NEAR, WORDS, HybridParams(), 2)) == ["c", "b"]  # only the best `limit`


@pytest.mark.parametrize(("changes", "message"), [
    ({"keyword_fields": ["caption"]}, "keyword field 'caption' is not 'text', 'label' or 'metadata.<key>'"),
    ({"keyword_fields": ["metadata."]}, "keyword field 'metadata.' is not"),
    ({"search_mode": "semantic"}, "search_mode"),
    ({"hybrid": {"vector_weight": 0, "keyword_weight": 0}}, "cannot both be 0"),
    ({"hybrid": {"rrf_k": 0}}, "rrf_k"),
    ({"hybrid": {"fusion": "max"}}, "fusion"),
])
def test_bad_hybrid_params_are_refused_naming_the_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        IndexParams(**changes)
    assert message in str(e.value)


def test_milvus_versions_are_read_from_both_spellings() -> None:
    assert milvus_version("v2.3.5") == (2, 3) < (2, 5) <= milvus_version("milvus_lite-3.2.2") == (3, 2)
    assert milvus_version("2.5.0-beta") == (2, 5) and milvus_version("unknown") == (0, 0)


@pytest.mark.parametrize(("text", "changes", "message"), [
    ("a cat", {"mode": "semantic"}, "unknown search mode 'semantic'; use one of ['vector', 'keyword', 'hybrid']"),
    (None, {"mode": "keyword"}, "search mode 'keyword' matches words: give a text query"),
    ("a cat", {"mode": "hybrid", "rerank": 20}, "search mode 'hybrid' does not re-rank"),
])
def test_a_bad_mode_is_refused_before_any_search(text: str | None, changes: dict[str, object], message: str) -> None:
    args = {"k": 10, "modality": None, "filter": "", "labels": (), "where": None, "weights": None,
            "fusion": "vector", "rerank": None} | changes
    with pytest.raises(QueryError) as e:
        Query.checked(text, "query.png" if text is None else None, None, **args)  # type: ignore[arg-type]
    assert message in str(e.value)


def test_the_page_offers_the_modes_and_sends_the_chosen_one(tmp_path: Path) -> None:
    http = TestClient(create_app(["demo"], get_settings(tmp_path), ServiceConfig()), base_url="http://127.0.0.1")
    page = http.get("/").text
    script = http.get("/static/app.js").text
    assert '<select id="mode" name="mode"' in page
    assert all(f'<option value="{m}">{m}</option>' in page for m in ("vector", "keyword", "hybrid"))
    assert 'const mode = $("mode").value || null;' in script and "labels: labels(), mode }" in script


def test_the_configured_mode_takes_text_queries_but_not_text_with_a_file() -> None:
    """index.search_mode: hybrid applies to a text query; text fused with an image or audio query stays a vector
    search (as `fusion` says), since the upload route has no mode to ask for another."""
    from types import SimpleNamespace

    from mmretrieval.serving.client import RetrievalClient

    state = SimpleNamespace(_params=IndexParams(search_mode="hybrid"), _has_keywords=lambda collection: True)

    def mode(**parts: object) -> str:
        query = Query.checked(parts.get("text"), parts.get("image"), parts.get("audio"), k=5, modality=None,
                              filter="", labels=(), where=None, weights=None, fusion="late", rerank=None)
        return RetrievalClient._mode(state, query, "c")  # type: ignore[arg-type]

    assert mode(text="a red car") == "hybrid"
    assert mode(text="a red car", image=b"\x89PNG") == "vector"
    assert mode(image=b"\x89PNG") == "vector"
