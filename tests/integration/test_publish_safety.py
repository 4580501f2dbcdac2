"""A publish that dies at any step leaves the alias on the old collection; the next run repairs; reruns are no-ops."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.backends.index import MilvusIndex
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_all, run_stage
from mmretrieval.stages import publish
from mmretrieval.stages.ingest import ingest
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


def publish_with_a_row_past_the_limits(workspace: Path) -> str:
    """Every stage up to embed, then a clean row's metadata edited past the index's JSON limit (after validation,
    which would have quarantined it): `mmr publish` fails with one line naming the row and leaves no collection."""
    import json
    import re

    import pandas as pd

    from tests.conftest import mmr

    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    for verb in ("validate", "clean", "augment", "train", "evaluate", "promote", "embed"):
        run_stage(verb, "tiny")
    manifest = workspace / "data/clean/tiny/manifest.parquet"
    clean = pd.read_parquet(manifest)
    clean.loc[2, "metadata"] = json.dumps({"notes": "n" * 70_000})
    clean.to_parquet(manifest, index=False)
    out = mmr("publish", "--dataset", "tiny", cwd=workspace)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mmr: error: publish tiny: row ") and repr(clean.at[2, "id"]) in last
    assert re.search(r"metadata is 700\d\d bytes of JSON, above the 65536-byte limit", last)
    with MilvusIndex(get_settings().milvus_uri) as ix:
        assert ix.resolve_alias("mmr_tiny") is None and ix.collections("mmr_tiny") == []
    return last


def test_a_row_milvus_would_refuse_stops_publish_in_one_line_and_leaves_nothing_half_built(workspace: Path) -> None:
    assert publish_with_a_row_past_the_limits(workspace).startswith("mmr: error: publish tiny: row ")
