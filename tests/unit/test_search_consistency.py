"""Which Milvus consistency level each search asks for: Strong where writes were just made (publish's checks,
evaluation), Eventually for serving a published collection (a 2.3 server makes a Strong search wait for its next
time tick). A fake pymilvus client records the calls: no Milvus is needed to see what is sent."""

from __future__ import annotations

from typing import Any

import pytest

from mmretrieval.backends.index import SERVING, STRONG, MilvusIndex
from mmretrieval.core.params import IndexParams
from mmretrieval.serving import hybrid


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def search(self, name: str, **kwargs: Any) -> list[list[dict[str, Any]]]:
        self.calls.append(kwargs)
        return [[{"id": "a", "distance": 0.5, "entity": {"keywords": "x"}}] for _ in kwargs["data"]]

    def describe_collection(self, name: str) -> dict[str, Any]:
        from mmretrieval.backends.index import BM25_FUNCTION

        return {"functions": [{"name": BM25_FUNCTION}]}


@pytest.fixture
def index() -> MilvusIndex:
    ix = MilvusIndex("http://127.0.0.1:1")  # never connected: the client below answers
    ix._client = RecordingClient()  # type: ignore[assignment]
    return ix


def test_a_search_is_strong_unless_asked_otherwise(index: MilvusIndex) -> None:
    index.search("c", [[1.0, 0.0]], 3, IndexParams())
    index.search("c", [[1.0, 0.0]], 3, IndexParams(), consistency=SERVING)
    index.keyword_search("c", ["red"], 3)
    index.keyword_search("c", ["red"], 3, consistency=SERVING)
    assert [c["consistency_level"] for c in index.client.calls] == [STRONG, SERVING, STRONG, SERVING]
    assert SERVING == "Eventually" and STRONG == "Strong"


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_every_search_of_a_mode_carries_the_level_it_was_given(index: MilvusIndex, mode: str) -> None:
    hybrid.search_rows(index, "c", IndexParams(), mode, [[1.0, 0.0]], ["red"], 3, consistency=SERVING)
    assert index.client.calls and all(c["consistency_level"] == SERVING for c in index.client.calls)
    index.client.calls.clear()
    hybrid.search_ids(index, "c", IndexParams(), mode, [[1.0, 0.0]], ["red"], 3)  # evaluation: just inserted
    assert index.client.calls and all(c["consistency_level"] == STRONG for c in index.client.calls)
