"""Evaluation's keyword and hybrid modes without Milvus: which modes a dataset serves, and the collection rows the
temporary collection gets from a manifest's items (the ranking itself: tests/integration/test_hybrid_evaluation.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mmretrieval.backends.index import KEYWORDS, with_keywords
from mmretrieval.core.params import IndexParams, RerankParams
from mmretrieval.serving.keyword_modes import gallery_rows, hybrid_mode, keyword_mode
from mmretrieval.serving.modes import MODES, Gallery, ModeContext


def context(index: IndexParams | None) -> ModeContext:
    gallery = Gallery("image", ["a"], [None], [{"id": "a"}])
    none: Any = None  # what the mode builders below never touch before deciding
    return ModeContext(none, none, none, gallery, index, RerankParams())


@pytest.mark.parametrize(("search_mode", "served"), [("vector", set()), ("keyword", {"keyword"}),
                                                     ("hybrid", {"hybrid"})])
def test_a_word_mode_is_evaluated_only_where_serving_searches_that_way(search_mode: str, served: set[str]) -> None:
    ctx = context(IndexParams(search_mode=search_mode))
    assert {name for name, build in (("keyword", keyword_mode), ("hybrid", hybrid_mode)) if build(ctx)} == served
    assert keyword_mode(context(None)) is None and hybrid_mode(context(None)) is None
    assert list(MODES)[-2:] == ["keyword", "hybrid"]


def test_gallery_rows_carry_what_publish_inserts_and_missing_values_are_empty() -> None:
    rows = [{"text": "a red square ||| something red", "label": "red", "path": "images/r.png",
             "metadata": '{"tags": ["shiny", "new"], "n": 3}'},
            {"text": math.nan, "label": None, "metadata": "not json"}]
    gallery = Gallery("image", ["r", "x"], [None, None], rows)
    out = gallery_rows(gallery, np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), "7")
    assert [r["id"] for r in out] == ["r", "x"] and out[1]["vector"] == [0.0, 1.0]
    assert out[0]["metadata"] == {"tags": ["shiny", "new"], "n": 3} and out[1]["metadata"] == {}
    assert (out[1]["text"], out[1]["label"], out[1]["path"]) == ("", "", "")
    assert out[0]["model_version"] == "7" and out[0]["modality"] == "image"
    out = list(with_keywords(out, ("text", "label", "metadata.tags")))
    assert out[0][KEYWORDS] == "a red square\nsomething red\nred\nshiny\nnew"
    assert out[1][KEYWORDS] == ""  # an item without text: never a keyword hit
