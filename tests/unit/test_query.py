"""The checks of a search request (``Query.checked``): pure argument logic, before Milvus or a model is touched."""

from typing import Any

import numpy as np
import pytest

from mmretrieval.core.errors import QueryError
from mmretrieval.serving.client import MAX_K, MAX_TEXT, Query
from mmretrieval.serving.filters import build_filter

GOOD: dict[str, Any] = {"k": 10, "modality": None, "filter": "", "labels": (), "where": None, "weights": None,
                        "fusion": "vector", "rerank": None}


def checked(text: str | None = "a cat", image: Any = None, audio: Any = None, **changes: Any) -> Query:
    return Query.checked(text, image, audio, **(GOOD | changes))


@pytest.mark.parametrize(("text", "changes", "message"), [
    ("a cat", {"k": 0}, "k must be a whole number between 1 and 1000, got 0"),
    ("a cat", {"k": MAX_K + 1}, f"got {MAX_K + 1}"),
    ("a cat", {"k": 2.0}, "got 2.0"),
    ("a cat", {"k": True}, "got True"),
    ("a cat", {"rerank": 1.5}, "rerank must be a whole number (0: off), got 1.5"),
    ("a cat", {"labels": "7"}, "got the single string '7': wrap it in a list"),
    ("a cat", {"weights": {"video": 1.0}}, "got 'video': 1.0"),
    ("a cat", {"weights": {"text": float("nan")}}, "got 'text': nan"),
    ("a cat", {"modality": "smell"}, "unknown modality 'smell'"),
    ("   ", {}, "the text query is empty"),
    ("x" * (MAX_TEXT + 1), {}, f"the text query has {MAX_TEXT + 1} characters; the limit is {MAX_TEXT}"),
    (None, {}, "give a text, image or audio query"),
    ("a cat", {"fusion": "early"}, "unknown fusion 'early'"),
])
def test_a_bad_argument_is_refused_naming_its_value(text: str | None, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError) as e:
        checked(text, **changes)
    assert message in str(e.value)


def test_the_first_bad_argument_is_the_one_named() -> None:
    with pytest.raises(QueryError, match="k must be"):
        checked(None, k=0, fusion="early")


def test_a_good_request_is_normalised() -> None:
    q = checked("  a cat ", k=np.int64(3), rerank=np.int32(20), weights={"text": 2})
    assert (q.text, q.k, q.rerank, q.weights) == ("a cat", 3, 20, {"text": 2})
    assert type(q.k) is int and type(q.rerank) is int
    assert checked(None, image=b"png").weights == {}
    q = checked(labels=["7"], where={"source": "scan"}, modality="video", filter='label != "1"')
    assert q.restriction("image") == build_filter("image", 'label != "1"', ["7"], {"source": "scan"})
