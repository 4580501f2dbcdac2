"""Checks of the index and of publish that run alike on Milvus Lite (test_backend_parity.py, test_publish_safety.py)
and on a real Milvus server (test_milvus_server.py): one outcome for both."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmretrieval.backends.index import MilvusIndex
from mmretrieval.core.errors import FilterError, IndexStoreError, QueryError
from mmretrieval.core.params import IndexParams
from mmretrieval.core.schema import JSON_MAX_BYTES, VARCHAR_LIMITS
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_stage
from mmretrieval.serving.filters import build_filter
from mmretrieval.stages import publish
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import tiny_dataset
from tests.helpers.workspace import mmr

ROWS, EF, DIM = 60, 16, 8
PARAMS = IndexParams(search_params={"ef": EF})
IVF = IndexParams(index_type="IVF_FLAT", build_params={"nlist": 16}, search_params={"nprobe": 1})


def make_rows(n: int = ROWS) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(n, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"id": f"item{i:03d}", "modality": "image" if i % 3 else "text", "vector": vectors[i].tolist(),
             "text": f"caption {i}", "path": f"p/{i}.png", "label": str(i % 10),
             "metadata": {"source": 'say "hi"' if i == 4 else "web", "photographer id": str(i % 2)},
             "model_version": "1", "data_version": "d"} for i in range(n)]


def filled(ix: MilvusIndex, name: str = "parity", params: IndexParams = PARAMS) -> list[dict[str, Any]]:
    rows = make_rows()
    if ix.exists(name):
        ix.drop(name)
    ix.create(name, DIM, {})
    list(ix.insert(name, rows))
    ix.build_index(name, params)
    ix.load(name)
    return rows


DEPTHS = (1, EF - 1, EF, EF + 1, ROWS, ROWS + 1, 1000)
EXPECTED_DEPTHS = [min(k, ROWS) for k in DEPTHS]
TEXT_ROWS = sum(1 for i in range(ROWS) if i % 3 == 0)  # make_rows: every third row is text


def check_depth(uri: str, params: IndexParams = PARAMS) -> list[int]:
    """k = 1, ef - 1, ef, ef + 1, rows, rows + 1: every one gets min(k, rows) distinct hits, best first (HNSW; and
    an IVF index probing one list)."""
    with MilvusIndex(uri) as ix:
        rows = filled(ix, params=params)
        query = [rows[0]["vector"]]
        for k in DEPTHS:
            hits = ix.search("parity", query, k, params, output_fields=["id"])[0]
            assert len(hits) == min(k, ROWS), f"k={k}: {len(hits)} hits"
            assert len({h["id"] for h in hits}) == len(hits) and hits[0]["id"] == "item000"
            scores = [h["score"] for h in hits]
            assert scores == sorted(scores, reverse=True)
        images = ix.search("parity", query, ROWS + 1, params, expr='modality == "image"', output_fields=["id"])[0]
        assert len(images) == sum(r["modality"] == "image" for r in rows)
        return [len(ix.search("parity", query, k, params, output_fields=["id"])[0]) for k in DEPTHS]


def check_filters(uri: str) -> int:
    """The modality restriction holds whatever the user's expression says; labels and metadata match exactly."""
    with MilvusIndex(uri) as ix:
        rows = filled(ix)
        query = [rows[1]["vector"]]

        def ids(expr: str) -> set[str]:
            return {h["id"] for h in ix.search("parity", query, ROWS, PARAMS, expr=expr, output_fields=["id"])[0]}

        def expected(keep: Any) -> set[str]:
            return {r["id"] for r in rows if keep(r)}

        assert ids(build_filter("text", 'label == "7" or label == "1"')) == expected(
            lambda r: r["modality"] == "text" and r["label"] in ("7", "1"))
        assert ids(build_filter("image", "", ["7", "1"])) == expected(
            lambda r: r["modality"] == "image" and r["label"] in ("7", "1"))
        assert ids(build_filter(where={"source": 'say "hi"'})) == {"item004"}
        assert ids(build_filter(where={"photographer id": "1"}, labels=["3"])) == expected(
            lambda r: r["label"] == "3" and int(r["id"][4:]) % 2 == 1)
        assert ids(build_filter(labels=['" or modality != "'])) == set()  # an injection attempt matches nothing
        for bad in ('label == ', 'nofield == "1"', "modality == 'text' or"):
            with pytest.raises(FilterError, match="not a valid Milvus expression"):
                ix.search("parity", query, 5, PARAMS, expr=build_filter("text", bad))
        with pytest.raises(QueryError, match="leaves 1 bracket"):  # refused before Milvus sees it
            build_filter("text", "label in [")
        return len(ids(build_filter("text")))  # every text row passes a bare modality restriction


def check_limits(uri: str) -> int:
    """Rows beyond the schema's limits are refused before anything is inserted, naming the row; alike on both."""
    long_id = "x" * 665
    cases = [
        ({"id": long_id}, f"'{'x' * 80}'.*'id' is 665 bytes, above its {VARCHAR_LIMITS['id']}-byte limit"),
        ({"id": "é" * 300}, "'id' is 600 bytes"),  # 300 characters, 600 bytes: bytes count
        ({"metadata": {"notes": "n" * 70_000}}, f"metadata is 70013 bytes of JSON, above the {JSON_MAX_BYTES}"),
        ({"label": "a\x00b"}, "'label' contains a NUL character"),
        ({"path": "p" * 5000}, "'path' is 5000 bytes, above its 4096-byte limit"),
    ]
    with MilvusIndex(uri) as ix:
        for change, words in cases:
            rows = make_rows(3)
            rows[1].update(change)
            if ix.exists("limits"):
                ix.drop("limits")
            ix.create("limits", DIM, {})
            with pytest.raises(IndexStoreError, match=words):
                list(ix.insert("limits", rows))
            assert int(ix.client.get_collection_stats("limits")["row_count"]) == 0  # nothing half-inserted
        rows = make_rows(3)
        rows[2]["vector"] = rows[2]["vector"][:4]  # a remaining Milvus error: one message naming the batch's ids
        with pytest.raises(IndexStoreError, match=r"insert into 'limits' failed for the batch of rows 1-3 "
                                                  r"\(ids 'item000' \.\. 'item002'\)"):
            list(ix.insert("limits", rows))
        ix.drop("limits")
        return len(cases) + 1  # refusals seen


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


def publish_with_a_row_past_the_limits(workspace: Path) -> str:
    """Every stage up to embed, then a clean row's metadata edited past the index's JSON limit (after validation,
    which would have quarantined it): `mmr publish` fails with one line naming the row and leaves no collection."""
    import pandas as pd

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
