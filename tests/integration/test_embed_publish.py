"""Sharded, resumable embedding; publish steps and dimension checks; queries answering during a publish and swap."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.errors import PublishError
from mmretrieval.core.io import read_json, write_json
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_all, run_stage
from mmretrieval.serving.client import RetrievalClient
from mmretrieval.stages import embed, publish
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import tiny_dataset
from tests.helpers.workspace import FAST_PARAMS

pytestmark = pytest.mark.integration


@pytest.fixture
def sharded(workspace: Path) -> Path:
    (workspace / "params.yaml").write_text(FAST_PARAMS + "embed: {shard_rows: 5, num_workers: 0}\n", encoding="utf-8")
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    for verb in ("validate", "clean", "augment", "train", "evaluate", "promote"):
        run_stage(verb, "tiny")
    return workspace


def test_a_killed_embedding_resumes_from_its_finished_shards(sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = embed.encode_rows
    calls: list[int] = []

    def dies_on_third_shard(part: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(part))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(part, *args, **kwargs)

    monkeypatch.setattr(embed, "encode_rows", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        embed.run("tiny")
    p = embed.plan("tiny")
    assert p.shards == 4 and p.pending() == [2, 3] and not p.final.exists()

    calls.clear()
    summary = embed.run("tiny")
    assert calls == [5, 1]  # only the two missing shards ran (16 items: 5 + 5 + 5 + 1)
    assert summary["rows"] == 16 and summary["modalities"] == {"image": 16} and len(summary["shards"]) == 4
    assert not p.work.exists() and (p.final / "embed.json").is_file()
    timings = summary["timings"]  # the shards of both runs, each piece timed; no timing file left in the folder
    assert timings["items"] == 16 and all(timings[piece]["seconds"] > 0 for piece in ("reader", "mapper", "writer"))
    assert not list(p.final.glob("timings-*"))
    calls.clear()
    assert embed.run("tiny")["skipped"] is True and calls == []


def test_shards_of_an_older_plan_are_discarded(sharded: Path) -> None:
    p = embed.plan("tiny")
    embed.embed_shard(p, 0)
    write_json(p.work / "plan.json", {**p.key(), "data_version": "something-else"})
    assert embed.plan("tiny").pending() == [0, 1, 2, 3]


def test_the_dag_steps_embed_shard_by_shard_then_build_check_and_swap(sharded: Path) -> None:
    shards = embed.pending("tiny")
    assert shards == [0, 1, 2, 3]
    for k in shards:
        embed.run_shard("tiny", k)
    assert embed.pending("tiny") == []
    assert embed.finalize("tiny")["rows"] == 16
    with pytest.raises(PublishError, match="not verified"):
        publish.swap("tiny")  # nothing swaps before the check
    built = publish.build("tiny")
    assert built["built"] and built["rows"] == 16 and built["serving"] is None
    with pytest.raises(PublishError, match="not verified"):
        publish.swap("tiny")
    assert publish.check("tiny")["checks"]["rows"] == 16
    swapped = publish.swap("tiny")
    assert swapped["changed"] and swapped["previous"] is None
    assert publish.run("tiny")["changed"] is False


def test_embeddings_whose_dimension_disagrees_with_their_summary_are_refused(sharded: Path) -> None:
    summary = run_stage("embed", "tiny")
    path = Path(summary["path"]) / "embed.json"
    write_json(path, {**read_json(path, "summary"), "dim": summary["dim"] + 1})
    with pytest.raises(PublishError, match=r"-d: embed again"):
        publish.run("tiny")


def test_queries_keep_answering_while_a_new_collection_is_published_and_swapped(workspace: Path) -> None:
    """Milvus Lite: one process owns the file, so the service and the publisher share it (see README)."""
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    first = run_all("tiny")["publish"]
    s = get_settings()
    run_stage("train", "tiny")
    tracking.set_alias(s, "tiny", tracking.CHAMPION, "2")
    run_stage("embed", "tiny")
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def query_loop() -> None:
        with RetrievalClient("tiny") as client:
            while not stop.is_set():
                try:
                    hits = client.search(text="a red square", k=3)
                    assert len(hits) == 3
                    seen.append(hits[0].collection)
                except BaseException as e:  # noqa: BLE001 - collected for the assertion below
                    errors.append(e)
                    return

    worker = threading.Thread(target=query_loop)
    worker.start()
    try:
        while not seen and not errors and worker.is_alive():
            stop.wait(0.05)  # serving before the publish starts
        second = publish.run("tiny")
        while not seen or seen[-1] != second["collection"]:
            if errors or not worker.is_alive():
                break
            stop.wait(0.05)
    finally:
        stop.set()
        worker.join(60)
    assert errors == []
    assert seen[0] == first["collection"] and seen[-1] == second["collection"]
    assert set(seen) == {first["collection"], second["collection"]}


def test_publish_streams_the_shards_in_chunks_and_centres_as_if_it_held_them_all(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 24: at no point does publish hold more rows than one chunk (here 3 of 16 rows in 4 shards of 5); the
    centring fitted a block at a time is the one fitted on every vector at once."""
    import gc

    import numpy as np
    import pandas as pd
    from pymilvus import MilvusClient

    from mmretrieval.backends.index import MilvusIndex
    from mmretrieval.evaluation import centring

    (workspace / "params.yaml").write_text(FAST_PARAMS + "embed: {shard_rows: 5, num_workers: 0}\n"
                                           "index: {centre: [image], centre_min_items: 2}\n", encoding="utf-8")
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    for verb in ("validate", "clean", "augment", "train", "evaluate", "promote", "embed"):
        run_stage(verb, "tiny")
    monkeypatch.setattr(publish, "INSERT_ROWS", 3)
    sent: list[tuple[int, int]] = []  # (rows in an insert request, row dicts alive when it was sent)
    real = MilvusClient.insert

    def counted(self: Any, name: str, data: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        alive = sum(1 for o in gc.get_objects() if type(o) is dict and "data_version" in o and "vector" in o)
        sent.append((len(data), alive))
        return real(self, name, data, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "insert", counted)
    built = publish.build("tiny")
    assert built["rows"] == 16 and [n for n, _ in sent] == [3, 3, 3, 3, 3, 1]
    assert max(alive for _, alive in sent) <= 3

    s = get_settings()
    summary = read_json(s.layout("tiny").embedding_summary("1"), "summary")
    frame = pd.concat([pd.read_parquet(Path(summary["path"]) / shard) for shard in summary["shards"]])
    vectors = np.stack(frame["vector"].to_numpy()).astype(np.float32)
    at_once = centring.fit(vectors, list(frame["modality"]), ["image"], 2)
    expected = dict(zip(frame["id"], at_once.apply_rows(vectors, list(frame["modality"])), strict=True))
    with MilvusIndex(s.milvus_uri) as ix:
        ix.load(built["collection"])
        stored = ix.client.query(built["collection"], filter="", output_fields=["id", "vector"], limit=100)
        means = centring.Centring.from_property(ix.properties(built["collection"])[centring.PROPERTY])
    assert len(stored) == 16 and np.allclose(means.means["image"], at_once.means["image"], atol=1e-6)
    assert all(np.allclose(row["vector"], expected[row["id"]], atol=1e-6) for row in stored)
    assert not np.allclose(at_once.apply_rows(vectors, list(frame["modality"])), vectors, atol=1e-3)  # centred
    assert publish.check("tiny")["checks"]["ann_recall@10"] == 1.0
