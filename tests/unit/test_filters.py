"""Filter expressions built from structured parts (mmretrieval.serving.filters): parentheses, quoting, refusals."""

from __future__ import annotations

import pytest

from mmretrieval.core.errors import QueryError
from mmretrieval.serving.filters import build_filter, parse_where, quote


def test_the_modality_restriction_and_a_user_or_stay_apart() -> None:
    assert build_filter("text", 'label == "7" or label == "1"') == \
        'modality == "text" and (label == "7" or label == "1")'


def test_labels_and_metadata_become_quoted_conditions() -> None:
    assert build_filter(labels=["7", "1", "7"]) == 'label in ["7", "1"]'
    assert build_filter(labels=["7"]) == 'label == "7"'
    assert build_filter("image", "", ["cat"], {"source": "flickr", "photographer id": "12"}) == (
        'modality == "image" and label == "cat" and metadata["source"] == "flickr" '
        'and metadata["photographer id"] == "12"')
    assert build_filter() == ""
    assert build_filter(expr='  label == "x"  ') == 'label == "x"'


@pytest.mark.parametrize(("value", "literal", "label"), [
    ('say "hi"', r'"say \"hi\""', r'"say \"hi\""'),
    ("back\\slash", r'"back\\slash"', r'"back\\slash"'),
    ('" or modality != "', r'"\" or modality != \""', r'"\" or modality != \""'),  # an injection stays one string
    ("line\nbreak\ttab", r'"line\nbreak\ttab"', '"line break tab"'),  # a filter value is normalised first
    ("bell\x07", r'"bell\u0007"', '"bell"'),
    ("ünïcödé 猫", '"ünïcödé 猫"', '"ünïcödé 猫"'),
    ("\u202etac", '"\u202etac"', '"cat"'),  # what displays, as clean stores labels
])
def test_every_value_is_one_escaped_string_literal(value: str, literal: str, label: str) -> None:
    assert quote(value) == literal
    assert build_filter(labels=[value]) == f"label == {label}"
    assert build_filter(where={"k": value}) == f'metadata["k"] == {label}'


def test_where_items_split_at_the_first_equals_sign() -> None:
    assert parse_where(["source=flickr", "formula=a=b", "empty="]) == {"source": "flickr", "formula": "a=b",
                                                                        "empty": ""}


@pytest.mark.parametrize(("call", "words"), [
    (lambda: parse_where(["no-equals"]), "'no-equals' is not KEY=VALUE"),
    (lambda: parse_where(["=v"]), "'=v' is not KEY=VALUE"),
    (lambda: build_filter(where={" ": "v"}), "needs a key"),
    (lambda: build_filter(labels=["a\x00b"]), "NUL"),
    (lambda: build_filter(expr="x" * 5000), "5000 characters"),
    (lambda: build_filter(labels=[str(i) for i in range(1001)]), "1001 labels"),
])
def test_unusable_filter_parts_are_query_errors_naming_them(call, words: str) -> None:  # noqa: ANN001
    with pytest.raises(QueryError, match=words):
        call()


@pytest.mark.parametrize("expr", ['label == "x") or (modality == "video"', 'label == "x" or (modality == "a"',
                                  'label in ["a", "b")', 'label == "open string'])
def test_a_raw_filter_cannot_close_the_parentheses_around_it(expr: str) -> None:
    with pytest.raises(QueryError, match="the filter"):
        build_filter("image", expr, labels=["7"])


def test_brackets_inside_string_literals_are_text() -> None:
    assert build_filter("image", 'label in ["a)", "(b"] and metadata["k"] == "it\\"s)"').endswith(
        '(label in ["a)", "(b"] and metadata["k"] == "it\\"s)")')
