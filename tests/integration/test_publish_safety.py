"""A publish that dies at any step leaves the alias on the old collection; the next run repairs; reruns are no-ops."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmretrieval import publish, tracking
from mmretrieval.config import get_settings
from mmretrieval.datasets import ingest
from mmretrieval.index import MilvusIndex
from mmretrieval.stages import run_all, run_stage
from tests.integration.test_training import tiny_dataset


class Killed(Exception):
    pass


def die(*_: object, **__: object) -> None:
    raise Killed("process killed")


def kill_publish_at_each_step(monkeypatch: pytest.MonkeyPatch, uri: str, serving: str, half_built: str) -> None:
    """Kill ``publish.run("tiny")`` at insert, index, verification and swap; after each the alias still serves
    ``serving`` and ``half_built`` is left ``building`` (``verified`` when only the swap died)."""
    for target, step in ((MilvusIndex, "insert"), (MilvusIndex, "build_index"), (publish, "verify"),
                         (MilvusIndex, "point_alias")):
        with monkeypatch.context() as patch:
            patch.setattr(target, step, die)
            with pytest.raises(Killed):
                publish.run("tiny")
        with MilvusIndex(uri) as ix:
            assert ix.resolve_alias("mmr_tiny") == serving, step
            expected = publish.VERIFIED if step == "point_alias" else publish.BUILDING
            assert ix.properties(half_built)[publish.STATE] == expected, step


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
