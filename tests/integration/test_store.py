"""The shared data store (mmretrieval/backends/store.py) against a real S3-compatible server (moto_server on loopback):
listing, a push/pull round trip, readers that only follow commit records, a push killed before its commit, garbage
collection, embedding shards committed one by one, and stages handing their outputs over between workspaces that
share no folder (raw data through DVC's remote in the same bucket)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmretrieval.backends.store import COMMIT, OBJECTS, Store
from mmretrieval.core.errors import StoreError
from tests.helpers.servers import S3_CREDENTIALS, s3_server
from tests.helpers.workspace import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with s3_server("mmr") as url:
        yield url


@pytest.fixture
def url(s3: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix of the bucket, with the store's endpoint and credentials in the environment."""
    for name, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3}.items():
        monkeypatch.setenv(name, value)
    return f"s3://mmr/{uuid.uuid4().hex[:12]}"


def folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def versions(store: Store, unit: str) -> set[str]:
    return {p.rsplit("/", 1)[-1] for p in store.fs.ls(f"{store.key(unit)}/{OBJECTS}", detail=False)}


def test_push_then_pull_round_trips_a_folder_and_a_file_and_lists_them(url: str, tmp_path: Path) -> None:
    files = {"manifest.parquet": os.urandom(3000), "media/a/1.jpg": os.urandom(70_000), "report.json": b"{}"}
    writer = Store(url, markers=tmp_path / "w-markers")
    record = writer.push(folder(tmp_path / "out", files), "clean/ds")
    (tmp_path / "log.jsonl").write_text('{"action": "promote"}\n')
    writer.push(tmp_path / "log.jsonl", "var/promotions/ds.jsonl")
    assert writer.units("") == ["clean/ds", "var/promotions/ds.jsonl"] and writer.units("clean") == ["clean/ds"]
    assert sorted(record["files"]) == sorted(files) and record["files"]["media/a/1.jpg"]["size"] == 70_000

    reader = Store(url, markers=tmp_path / "r-markers")
    assert reader.pull("clean/ds", tmp_path / "in")["commit"] == record["commit"]
    assert tree(tmp_path / "in") == files
    assert reader.pull("var/promotions/ds.jsonl", tmp_path / "var/ds.jsonl") is not None
    assert (tmp_path / "var/ds.jsonl").read_text() == '{"action": "promote"}\n'
    assert reader.marked("clean/ds") == record["commit"]

    writer.fs.rm(f"{writer.key('clean/ds')}/{OBJECTS}", recursive=True)  # a second pull downloads nothing...
    assert reader.pull("clean/ds", tmp_path / "in")["commit"] == record["commit"]
    assert tree(tmp_path / "in") == files
    assert writer.push(tmp_path / "out", "clean/ds")["commit"] == record["commit"]  # ...an unchanged push uploads none


def test_a_reader_never_sees_an_upload_without_its_commit_record(url: str, tmp_path: Path) -> None:
    store = Store(url, markers=tmp_path / "markers")
    store.fs.pipe_file(f"{store.key('clean/ds')}/{OBJECTS}/{uuid.uuid4().hex}/manifest.parquet", b"half")
    assert store.units("") == [] and store.commit("clean/ds") is None
    assert store.pull("clean/ds", tmp_path / "in") is None
    assert not (tmp_path / "in").exists()


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_commit_whose_objects_are_missing_or_differ_is_refused_and_the_local_copy_kept(
        url: str, tmp_path: Path, damage: str) -> None:
    store = Store(url, markers=tmp_path / "w")
    first = folder(tmp_path / "v1", {"a.txt": b"one", "b.txt": b"two"})
    store.push(first, "validated/ds")
    reader = Store(url, markers=tmp_path / "r")
    reader.pull("validated/ds", tmp_path / "in")
    second = store.push(folder(tmp_path / "v2", {"a.txt": b"ONE", "b.txt": b"TWO"}), "validated/ds")
    key = f"{store.key('validated/ds')}/{OBJECTS}/{second['commit']}/b.txt"
    if damage == "missing":
        store.fs.rm(key)
    else:
        store.fs.pipe_file(key, b"TW0")  # same size, other bytes
    with pytest.raises(StoreError, match="b.txt") as e:
        reader.pull("validated/ds", tmp_path / "in")
    assert second["commit"] in str(e.value)
    assert tree(tmp_path / "in") == {"a.txt": b"one", "b.txt": b"two"}  # the old copy, whole
    assert reader.marked("validated/ds") != second["commit"]


KILLED_PUSH = """
import os, signal, sys
from pathlib import Path
from mmretrieval.backends.store import Store
store = Store(sys.argv[1])
store._write_commit = lambda unit, record: os.kill(os.getpid(), signal.SIGKILL)  # dies after its objects
store.push(Path(sys.argv[2]), "clean/ds")
"""


def test_a_push_killed_between_its_objects_and_its_commit_leaves_readers_on_the_previous_output(
        url: str, tmp_path: Path) -> None:
    store = Store(url)
    old = {"manifest.parquet": b"old" * 100, "media/1.jpg": b"x" * 500}
    committed = store.push(folder(tmp_path / "old", old), "clean/ds")
    new = folder(tmp_path / "new", {"manifest.parquet": b"new" * 100, "media/1.jpg": b"y" * 500, "media/2.jpg": b"z"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_PUSH, url, str(new)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(versions(store, "clean/ds")) == 2  # its objects were all uploaded...
    assert store.commit("clean/ds")["commit"] == committed["commit"]  # ...but never committed
    assert store.pull("clean/ds", tmp_path / "in")["commit"] == committed["commit"]
    assert tree(tmp_path / "in") == old
    assert store.gc("clean/ds") == []  # a fresh orphan is kept (its writer might still be uploading)...
    assert len(store.gc("clean/ds", grace_s=0)) == 1  # ...and deleted once older than the grace period
    assert versions(store, "clean/ds") == {committed["commit"]}


def test_gc_keeps_the_current_and_the_previous_version_only(url: str, tmp_path: Path) -> None:
    store = Store(url)
    records = [store.push(folder(tmp_path / f"v{i}", {"f.txt": f"version {i}".encode()}), "augmented/ds")
               for i in range(4)]
    current, previous = records[-1]["commit"], records[-2]["commit"]
    assert versions(store, "augmented/ds") == {current, previous}
    assert records[-1]["previous"] == previous and records[-1]["history"][:3] == [r["commit"] for r in records[-2::-1]]
    prior = store.fs.cat_file(f"{store.key('augmented/ds')}/{OBJECTS}/{previous}/f.txt")
    assert prior == b"version 2"  # a reader that read the previous commit record can still finish its download
    assert store.fs.exists(f"{store.key('augmented/ds')}/{COMMIT}")


def test_embedding_shards_are_committed_one_by_one_and_merged_by_the_finishing_worker(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmretrieval.core.settings import get_settings
    from mmretrieval.handoff import drop_shards, merge_shards, push_shard, store_of
    from tests.helpers.workspace import make_workspace

    monkeypatch.setenv("MMR_DATA_URL", url)
    plan = b'{"model_version": "3", "rows": 5}'
    for k, worker in enumerate(("w1", "w2")):  # each worker embedded one shard into its own work folder
        settings = get_settings(make_workspace(tmp_path / worker))
        work = settings.layout("ds").embeddings("3.partial")
        folder(work, {"plan.json": plan, f"part-{k:05d}.parquet": f"rows {k}".encode(), f"timings-{k:05d}.json": b"{}",
                      f"regions/regions-{k:05d}.npy": b"r", f"regions/ids-{k:05d}.json": b"[]",
                      f"part-{1 - k:05d}.parquet": b"not this shard", f"part-{k:05d}.parquet.tmp": b"being written"})
        push_shard(store_of(settings), settings, "ds", "3", k)
    finisher = get_settings(make_workspace(tmp_path / "w3"))
    store = store_of(finisher)
    assert store.units("embeddings/ds") == [f"embeddings/ds/v3.partial/shard-0000{k}" for k in (0, 1)]
    assert sorted(merge_shards(store, finisher, "ds", "3")) == [0, 1]
    assert tree(finisher.layout("ds").embeddings("3.partial")) == {
        "part-00000.parquet": b"rows 0", "part-00001.parquet": b"rows 1", "plan.json": plan,
        "regions/ids-00000.json": b"[]", "regions/ids-00001.json": b"[]", "regions/regions-00000.npy": b"r",
        "regions/regions-00001.npy": b"r", "timings-00000.json": b"{}", "timings-00001.json": b"{}"}
    other = get_settings(make_workspace(tmp_path / "w4"))  # a worker whose own plan differs takes none of them
    folder(other.layout("ds").embeddings("3.partial"), {"plan.json": b'{"model_version": "3", "rows": 6}'})
    assert merge_shards(store_of(other), other, "ds", "3") == []
    drop_shards(store, "ds", "3")
    assert store.units("embeddings") == []


def test_the_pipeline_spread_over_workers_that_share_no_folder_hands_over_through_the_store(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage on another worker with its own MMR_HOME: ingest (raw data pushed by DVC to the bucket), validate
    and clean elsewhere (exactly that data version pulled by DVC), augment, train, evaluate, promote each elsewhere;
    then the serve DAG's calls: embed_start pins, shards embedded on two workers and committed one by one (a
    redelivered shard is skipped), a third finishes from the store, the publish steps on three. MLflow and Milvus
    are one store each, as their servers are in a cluster: models never travel through the data store."""
    from mmretrieval.core.settings import get_settings
    from mmretrieval.handoff import embed_shard, embed_start, ingest, publish_build, publish_check
    from mmretrieval.runner import run_stage
    from tests.helpers.files import tiny_dataset
    from tests.helpers.workspace import FAST_PARAMS, make_workspace

    for name, value in {"MMR_DATA_URL": url, "MMR_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "MMR_MLFLOW_ARTIFACTS": str(tmp_path / "mlartifacts"),
                        "MMR_MILVUS_URI": str(tmp_path / "milvus.db")}.items():
        monkeypatch.setenv(name, value)
    params = FAST_PARAMS + "embed: {shard_rows: 6}\n"  # the 16 tiny rows in 3 shards
    w = {name: get_settings(make_workspace(tmp_path / name, params)) for name in ("w0", "w1", "w2", "w3")}
    ingested = ingest(tiny_dataset(tmp_path / "src"), "tiny", w["w0"])
    store = Store(url)
    assert store.units("") == ["raw/tiny.dvc"] and store.fs.find(f"{store.root}/dvc")  # pointer + DVC's objects
    validated = run_stage("validate", "tiny", w["w1"])
    assert validated["data_version"] == ingested["data_version"]  # exactly the ingested version, pulled by DVC
    assert tree(w["w1"].layout("tiny").raw) == tree(w["w0"].layout("tiny").raw)
    run_stage("clean", "tiny", w["w2"])
    assert not w["w1"].layout("tiny").clean.exists()
    assert run_stage("augment", "tiny", w["w1"])["data_version"] == ingested["data_version"]
    assert tree(w["w1"].layout("tiny").clean) == tree(w["w2"].layout("tiny").clean)
    version = str(run_stage("train", "tiny", w["w0"])["model_version"])
    run_stage("evaluate", "tiny", w["w1"], version=version)  # the reports and promotions travel too
    assert run_stage("promote", "tiny", w["w2"], version=version)["promoted"]

    started = embed_start("tiny", w["w1"])
    assert started.shards == [0, 1, 2]
    pinned = started.pinned
    assert not embed_shard("tiny", 0, w["w1"], pinned).get("skipped")
    assert not embed_shard("tiny", 1, w["w2"], pinned).get("skipped")
    assert embed_shard("tiny", 0, w["w2"], pinned) == {"shard": 0, "skipped": True}  # committed by w1
    assert embed_start("tiny", w["w3"]).shards == [2]  # what no worker committed yet
    embed_shard("tiny", 2, w["w2"], pinned)
    summary = run_stage("embed", "tiny", w["w3"], pinned=pinned)
    assert summary["rows"] == 16 and summary["shards"] == [f"part-0000{k}.parquet" for k in range(3)]
    assert store.units("embeddings") == [f"embeddings/tiny/v{version}"]  # the shards' units deleted after

    publish_build("tiny", w["w1"], pinned)
    assert publish_check("tiny", w["w2"], pinned)["checks"]["rows"] == 16
    published = run_stage("publish", "tiny", w["w0"], pinned=pinned)
    assert published["changed"] and published["model_version"] == version
    assert store.units("") == ["augmented/tiny", "clean/tiny", f"embeddings/tiny/v{version}", "raw/tiny.dvc",
                               "reports/tiny", "validated/tiny", "var/promotions/tiny.jsonl"]
    store.pull("reports/tiny", tmp_path / "reports")  # each worker pulled the reports before adding its result
    assert {p.stem for p in (tmp_path / "reports" / "stages").iterdir()} == {
        "validate", "clean", "augment", "train", "evaluate", "promote", "embed", "publish"}
