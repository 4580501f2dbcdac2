"""A publish that dies at any step leaves the alias on the old collection; the next run repairs; reruns are no-ops."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_all, run_stage
from mmretrieval.stages import publish
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import tiny_dataset
from tests.helpers.index_checks import kill_publish_at_each_step, publish_with_a_row_past_the_limits

pytestmark = pytest.mark.integration


def test_a_publish_killed_at_any_step_keeps_serving_the_old_collection(workspace: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    first = run_all("tiny")["publish"]
    s = get_settings()
    run_stage("train", "tiny")
    tracking.set_alias(s, "tiny", tracking.CHAMPION, "2")  # a new champion whose collection must be built
    run_stage("embed", "tiny")
    half = publish.collection_name("mmr_tiny", "2", first["data_version"])
    kill_publish_at_each_step(monkeypatch, s.milvus_uri, serving=first["collection"], half_built=half)
    repaired = publish.run("tiny")
    assert repaired["changed"] and repaired["collection"] == half and repaired["previous"] == first["collection"]
    assert publish.run("tiny")["changed"] is False
    assert publish.rollback("tiny")["collection"] == first["collection"]


def test_a_row_milvus_would_refuse_stops_publish_in_one_line_and_leaves_nothing_half_built(workspace: Path) -> None:
    assert publish_with_a_row_past_the_limits(workspace).startswith("mmr: error: publish tiny: row ")
