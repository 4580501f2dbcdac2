"""Keyword (BM25) and hybrid search on Milvus Lite, through the product's code: a toy corpus whose vector and BM25
ranks are built by hand, so the fused orders below are computed by hand (the arithmetic is in the comments).

Corpus (2-d vectors; the query vector is [1, 0], so the cosines are the first coordinates; every keyword text has five
words, so BM25 ranks by the count of the query word). v2 has no text: in hybrid search its vector rank stands in for
its keyword rank (mmretrieval.serving.hybrid.fuse):

====  ===========  =======================================  ===========  ===========
id    cosine       keyword text                             "zebra" rank "okapi" rank
====  ===========  =======================================  ===========  ===========
v1    1.0 (1st)    okapi one two three four                 -            2
v2    0.8 (2nd)    (none: an item without text)             -            -
v3    0.6 (3rd)    zebra zebra one two three                2            -
v4    0.0 (4th)    zebra okapi okapi one two                3            1
v5    -0.6 (5th)   zebra zebra zebra one two                1            -
====  ===========  =======================================  ===========  ===========
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mmretrieval.backends.index import KEYWORDS, MilvusIndex, keyword_text, with_keywords
from mmretrieval.core.errors import QueryError, SearchModeUnavailable
from mmretrieval.core.params import HybridParams, IndexParams
from mmretrieval.serving.hybrid import search_ids, search_rows

pytestmark = pytest.mark.integration

VECTORS = {"v1": [1.0, 0.0], "v2": [0.8, 0.6], "v3": [0.6, 0.8], "v4": [0.0, 1.0], "v5": [-0.6, 0.8]}
TEXTS = {"v1": "okapi ||| one two three four", "v2": "", "v3": "zebra zebra one two three",
         "v4": "zebra okapi okapi one two", "v5": "zebra zebra zebra one two"}
VECTOR_RANKS = {"v1": 1, "v2": 2, "v3": 3, "v4": 4, "v5": 5}
ZEBRA_RANKS = {"v5": 1, "v3": 2, "v4": 3}
OKAPI_RANKS = {"v4": 1, "v1": 2}
QUERY = [[1.0, 0.0]]
FLAT = IndexParams(index_type="FLAT", build_params={}, search_params={})


def rows() -> list[dict[str, object]]:
    return [{"id": i, "modality": "image", "vector": v, "text": TEXTS[i], "path": f"{i}.png", "label": "",
             "metadata": {}, "model_version": "1", "data_version": "toy"} for i, v in VECTORS.items()]


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[MilvusIndex]:
    """The corpus above in collection ``toy`` of a Milvus Lite file, keyword text as publish makes it."""
    with MilvusIndex(str(tmp_path / "milvus.db")) as ix:
        ix.create("toy", 2, {})
        assert ix.has_keywords("toy")
        list(ix.insert("toy", with_keywords(rows(), ("text", "label"))))
        ix.build_index("toy", FLAT)
        ix.load("toy")
        yield ix


def rrf_by_hand(words: dict[str, int], k: int = 60) -> list[str]:
    words = words | {"v2": VECTOR_RANKS["v2"]}  # the item without text: its vector rank stands in
    scores = {i: sum(1 / (k + r[i]) for r in (VECTOR_RANKS, words) if i in r) for i in VECTORS}
    return sorted(scores, key=lambda i: -scores[i])


def test_keyword_search_ranks_by_bm25_and_skips_items_without_the_word(toy: MilvusIndex) -> None:
    zebra, okapi, none = toy.keyword_search("toy", ["zebra", "Okapi!", "giraffe"], 10)
    assert [h["id"] for h in zebra] == ["v5", "v3", "v4"]
    assert [h["id"] for h in okapi] == ["v4", "v1"]  # lower-cased, punctuation split off by the analyzer
    assert none == []
    assert zebra[0]["score"] > zebra[1]["score"] > zebra[2]["score"] > 0  # BM25, positive on Lite too
    assert zebra[0]["path"] == "v5.png"  # the display fields come back as with vector search


def test_hybrid_search_returns_the_reciprocal_rank_fusion_order(toy: MilvusIndex) -> None:
    # zebra, k=60: v2 2/62=.03226  v3 1/63+1/62=.03200  v5 1/65+1/61=.03178  v4 1/64+1/63=.03150  v1 1/61=.01639
    assert rrf_by_hand(ZEBRA_RANKS) == ["v2", "v3", "v5", "v4", "v1"]
    # okapi, k=60: v1 1/61+1/62=.03252  v2 2/62=.03226  v4 1/64+1/61=.03202  v3 1/63  v5 1/65
    assert rrf_by_hand(OKAPI_RANKS) == ["v1", "v2", "v4", "v3", "v5"]
    # zebra, k=2: v2 2/4=.5  v5 1/7+1/3=.476  v3 1/5+1/4=.45  v4 1/6+1/5=.367  v1 1/3=.333
    assert rrf_by_hand(ZEBRA_RANKS, k=2) == ["v2", "v5", "v3", "v4", "v1"]
    assert search_ids(toy, "toy", FLAT, "hybrid", QUERY * 2, ["zebra", "okapi"], 5) == [
        ["v2", "v3", "v5", "v4", "v1"], ["v1", "v2", "v4", "v3", "v5"]]
    k2 = FLAT.model_copy(update={"hybrid": HybridParams(rrf_k=2)})
    assert search_ids(toy, "toy", k2, "hybrid", QUERY, ["zebra"], 5) == [["v2", "v5", "v3", "v4", "v1"]]
    assert search_ids(toy, "toy", FLAT, "hybrid", QUERY, ["zebra"], 2) == [["v2", "v3"]]  # the top k of the fusion
    fused = search_rows(toy, "toy", FLAT, "hybrid", QUERY, ["zebra"], 5)[0]
    assert fused[1]["score"] == pytest.approx(1 / 63 + 1 / 62) and fused[-1]["score"] == pytest.approx(1 / 61)
    assert KEYWORDS not in fused[0] and fused[0]["path"] == "v2.png"  # the fields asked for, no more


def test_weighted_fusion_normalises_each_list(toy: MilvusIndex) -> None:
    # vector scores 1, .8, .6, 0, -.6 -> (s + .6) / 1.6: v1 1, v2 .875, v3 .75, v4 .375, v5 0;
    # "okapi" hits v4, v1 -> 1, 0; v2 (no text) stands in .875.  Weights 1/1: v2 1.75, v4 1.375, v1 1, v3 .75, v5 0
    weighted = FLAT.model_copy(update={"hybrid": HybridParams(fusion="weighted")})
    assert search_ids(toy, "toy", weighted, "hybrid", QUERY, ["okapi"], 5) == [["v2", "v4", "v1", "v3", "v5"]]
    # vector weight 3: v2 2.625 + .875 = 3.5, v1 3, v3 2.25, v4 1.125 + 1 = 2.125, v5 0
    heavy = FLAT.model_copy(update={"hybrid": HybridParams(fusion="weighted", vector_weight=3.0)})
    rows_ = search_rows(toy, "toy", heavy, "hybrid", QUERY, ["okapi"], 5)[0]
    assert [h["id"] for h in rows_] == ["v2", "v1", "v3", "v4", "v5"]
    assert [round(h["score"], 4) for h in rows_] == [3.5, 3.0, 2.25, 2.125, 0.0]


def test_a_filter_restricts_both_lists_and_items_without_text_are_still_found(toy: MilvusIndex) -> None:
    # without v3: vector v1 1, v2 2, v4 3, v5 4; zebra v5 1, v4 2 -> v2 2/62=.03226, v5 1/64+1/61=.03202,
    # v4 1/63+1/62=.03200, v1 1/61
    assert search_ids(toy, "toy", FLAT, "hybrid", QUERY, ["zebra"], 5, expr='id != "v3"') == [
        ["v2", "v5", "v4", "v1"]]
    # a word no item has: hybrid is the vector order
    assert search_ids(toy, "toy", FLAT, "hybrid", QUERY, ["giraffe"], 5) == [["v1", "v2", "v3", "v4", "v5"]]
    assert search_ids(toy, "toy", FLAT, "vector", QUERY, None, 5) == [["v1", "v2", "v3", "v4", "v5"]]


def test_a_collection_of_items_without_text_searches_by_vector_in_hybrid_mode(tmp_path: Path) -> None:
    with MilvusIndex(str(tmp_path / "milvus.db")) as ix:
        ix.create("photos", 2, {})
        list(ix.insert("photos", with_keywords([dict(r, text="") for r in rows()], ("text", "label"))))
        ix.build_index("photos", FLAT)
        ix.load("photos")
        assert search_ids(ix, "photos", FLAT, "keyword", None, ["zebra"], 5) == [[]]
        assert search_ids(ix, "photos", FLAT, "hybrid", QUERY, ["zebra"], 5) == [["v1", "v2", "v3", "v4", "v5"]]


def test_bad_modes_and_missing_queries_are_refused(toy: MilvusIndex) -> None:
    with pytest.raises(QueryError, match="unknown search mode 'fuzzy'"):
        search_ids(toy, "toy", FLAT, "fuzzy", QUERY, ["zebra"], 5)
    with pytest.raises(QueryError, match="search mode 'keyword' needs a text query"):
        search_ids(toy, "toy", FLAT, "keyword", QUERY, None, 5)
    with pytest.raises(QueryError, match="1 query vectors but 2 query texts"):
        search_ids(toy, "toy", FLAT, "hybrid", QUERY, ["zebra", "okapi"], 5)


def test_a_collection_without_the_keyword_field_refuses_keyword_search_in_one_line(tmp_path: Path) -> None:
    with MilvusIndex(str(tmp_path / "milvus.db")) as ix:
        ix.create("plain", 2, {}, keywords=False)
        list(ix.insert("plain", rows()))
        ix.build_index("plain", FLAT)
        ix.load("plain")
        assert not ix.has_keywords("plain")
        assert search_ids(ix, "plain", FLAT, "vector", QUERY, None, 2) == [["v1", "v2"]]
        for mode in ("keyword", "hybrid"):
            with pytest.raises(SearchModeUnavailable) as e:
                search_ids(ix, "plain", FLAT, mode, QUERY, ["zebra"], 2)
            message = str(e.value)
            assert "'plain'" in message and ix.server_version() in message and "\n" not in message


def test_keyword_text_takes_the_fields_asked_for() -> None:
    meta = {"title": "Harbour at dusk", "tags": ["boat", "sea"], "year": 1999, "nested": {"x": 1}}
    assert keyword_text("a boat ||| the sea", "ships", meta, ("text", "label", "metadata.title", "metadata.tags")) \
        == "a boat\nthe sea\nships\nHarbour at dusk\nboat\nsea"
    assert keyword_text("a boat", "ships", meta, ("label", "metadata.year", "metadata.nested", "metadata.gone")) \
        == "ships\n1999"
    table = list(with_keywords(rows(), ("text",)))
    assert [r[KEYWORDS] for r in table][:2] == ["okapi\none two three four", ""]


def test_a_query_without_words_finds_no_keyword_hit_and_hybrid_falls_back_to_vector(toy: MilvusIndex) -> None:
    """Punctuation or blanks give BM25 no token: keyword mode answers nothing (not an error), hybrid the vector
    order."""
    for text in ("???", "   "):
        assert search_ids(toy, "toy", FLAT, "keyword", None, [text], 5) == [[]]
        vector = search_ids(toy, "toy", FLAT, "vector", [[1.0, 0.0]], None, 5)
        assert search_ids(toy, "toy", FLAT, "hybrid", [[1.0, 0.0]], [text], 5) == vector
