"""What the index does with deep searches, filters and rows that do not fit, on Milvus Lite here; the same checks
(tests/helpers/index_checks.py) run against a real server in test_milvus_server.py: one outcome for both."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.index_checks import EXPECTED_DEPTHS, IVF, TEXT_ROWS, check_depth, check_filters, check_limits

pytestmark = pytest.mark.integration


@pytest.fixture
def lite(tmp_path: Path) -> str:
    return str(tmp_path / "milvus.db")


def test_search_depth_covers_k_at_the_edges_of_ef_and_of_the_collection_on_lite(lite: str) -> None:
    assert check_depth(lite) == check_depth(lite, IVF) == EXPECTED_DEPTHS


def test_filters_mean_what_they_say_on_lite(lite: str) -> None:
    assert check_filters(lite) == TEXT_ROWS


def test_rows_beyond_the_schema_limits_are_refused_naming_the_row_on_lite(lite: str) -> None:
    assert check_limits(lite) == 6
