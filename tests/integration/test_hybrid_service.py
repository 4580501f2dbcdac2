"""Search modes where users meet them: the library, the evaluation hook, HTTP and the CLI, on the tiny dataset
published to Milvus Lite (captions "a <colour> square ||| something <colour>", label <colour>; four per colour)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from mmretrieval.cli import main
from mmretrieval.core.errors import QueryError
from mmretrieval.core.settings import Settings
from mmretrieval.serving.client import RetrievalClient
from mmretrieval.serving.http import ServiceConfig, create_app

pytestmark = pytest.mark.integration

RED = {f"red{i}" for i in range(4)}
BLUE = {f"blue{i}" for i in range(4)}


@pytest.fixture(scope="module")
def client(published_tiny: Settings) -> Iterator[RetrievalClient]:
    with RetrievalClient("tiny", settings=published_tiny) as c:
        yield c


def test_keyword_mode_finds_the_items_whose_words_match_and_only_them(client: RetrievalClient) -> None:
    hits = client.search(text="red", k=10, mode="keyword")
    assert {h.id for h in hits} == RED  # four items say "red"; the other twelve share no word with the query
    assert all(h.score > 0 for h in hits) and [h.rank for h in hits] == [1, 2, 3, 4]


def test_hybrid_mode_puts_the_word_matches_first_and_still_returns_k_items(client: RetrievalClient) -> None:
    hits = client.search(text="blue", k=16, mode="hybrid")
    # RRF: a blue item has a keyword part >= 1/64 and a vector part >= 1/76 (> 1/61, the best vector-only item)
    assert len(hits) == 16 and {h.id for h in hits[:4]} == BLUE
    assert [h.id for h in client.search(text="blue", k=5)] == [h.id for h in client.search(text="blue", k=5,
                                                                                          mode="vector")]


def test_the_evaluation_hook_ranks_ids_per_mode(client: RetrievalClient) -> None:
    info = client.info()
    assert info["search_modes"] == ["vector", "keyword", "hybrid"] and info["search_mode"] == "vector"
    assert [set(ids) for ids in client.search_ids("keyword", None, ["red", "blue square"], 4)] == [RED, BLUE]
    with pytest.raises(QueryError, match="unknown search mode 'both'"):
        client.search_ids("both", None, ["red"], 4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"text": "red", "mode": "fuzzy"}, "unknown search mode 'fuzzy'"),
    ({"text": "red", "mode": "keyword", "rerank": 8}, "search mode 'keyword' does not re-rank"),
])
def test_a_bad_mode_request_is_refused_by_the_library(client: RetrievalClient, kwargs: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(QueryError, match=message):
        client.search(**kwargs)  # type: ignore[arg-type]


def test_a_keyword_search_needs_words(client: RetrievalClient, published_tiny: Settings) -> None:
    image = published_tiny.home.parent / "src" / "images" / "red0.png"
    with pytest.raises(QueryError, match="search mode 'hybrid' matches words: give a text query"):
        client.search(image=image, mode="hybrid")


def test_http_takes_the_mode_field_and_refuses_a_bad_one_with_a_4xx(published_tiny: Settings) -> None:
    app = create_app(["tiny"], published_tiny, ServiceConfig(trusted_hosts=("127.0.0.1",)))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as http:
        ok = http.post("/search", json={"text": "red", "k": 10, "mode": "keyword"})
        bad = http.post("/search", json={"text": "red", "mode": "fuzzy"})
        clash = http.post("/search", json={"text": "red", "mode": "hybrid", "rerank": 12})
        schema = http.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]["mode"]
    assert ok.status_code == 200 and {h["id"] for h in ok.json()} == RED
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"][-1] == "mode"
    assert clash.status_code == 400 and "does not re-rank" in clash.json()["detail"]
    assert schema["anyOf"][0]["enum"] == ["vector", "keyword", "hybrid"] and "BM25" in schema["description"]


def test_the_cli_refuses_an_unknown_mode_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["search", "red", "--mode", "fuzzy"])
    assert e.value.code == 2
    assert "invalid choice: 'fuzzy'" in capsys.readouterr().err
