"""The scale-out cluster of ``scripts/cluster.py`` end to end: PostgreSQL, Redis, an S3 server (moto), the MLflow
and Milvus servers, Airflow with the CeleryExecutor and two Celery workers that share no folder. A dataset is
ingested (its raw data pushed to the bucket), ``mmr_prepare`` is triggered, and the Asset chain trains, gates,
embeds (mapped shards over both workers) and publishes; then a worker is killed mid-task on a second run, which
still completes.

Skipped when the Debian servers (or ``.venv-milvus``) are missing, unless ``MMR_REQUIRE_CLUSTER=1`` (``make test``
sets it): then it fails. Timings of each step are printed (``-s``) for docs/cluster.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cluster import airflow, client_env, kill_tree, missing, query, report, running_cluster
from tests.helpers.files import tiny_dataset
from tests.helpers.servers import mmr_serve
from tests.helpers.workspace import BIN, FAST_PARAMS, make_workspace

pytestmark = [pytest.mark.integration, pytest.mark.cluster]
DATASET = "tiny"
# 16 items, shards of 6 rows: 3 mapped embed tasks; quick towers (the plumbing is under test, not quality)
PARAMS = FAST_PARAMS.replace("datasets: [demo]", f"datasets: [{DATASET}]") + "embed: {shard_rows: 6}\n"
CHAIN_DEADLINE_S = 600  # about 7 min measured on 2 shared cores under load; the runs' own pace
TIMINGS: dict[str, float] = {}


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """Whatever a test or the hook exports into this process's environment (the store's AWS_* keys, an MLflow S3
    endpoint) is taken back after it: no later test meets the cluster's addresses."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    absent = missing()
    if absent:
        message = f"the cluster needs {', '.join(absent)} (make cluster-deps, make milvus-server-venv)"
        if os.environ.get("MMR_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    began = time.monotonic()
    with running_cluster(PARAMS) as info:
        TIMINGS["cluster start-up"] = round(time.monotonic() - began, 1)
        TIMINGS.update({f"  {k}": v for k, v in info["timings"].items()})
        yield info
    print("cluster timings (s):", json.dumps(TIMINGS, indent=1))


def served_events(info: dict[str, Any]) -> int:
    return len(query(info, "SELECT e.id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                           "WHERE a.name = 'mmr_serving_collection'"))


def wait_served(info: dict[str, Any], count: int, began: float) -> None:
    """Until ``count`` serving events exist and no run is unfinished (the event comes a moment before its run ends)."""
    while served_events(info) < count or query(info, "SELECT id FROM dag_run WHERE state IN ('queued', 'running')"):
        failed = query(info, "SELECT dag_id, run_id FROM dag_run WHERE state = 'failed'")
        assert not failed and time.monotonic() - began < CHAIN_DEADLINE_S, report(info)
        time.sleep(2)


def hosts(info: dict[str, Any], task_id: str | None = None) -> list[str]:
    sql = "SELECT hostname FROM task_instance WHERE state = 'success'"
    rows = query(info, sql + " AND task_id = %s", task_id) if task_id else query(info, sql)
    return sorted(h for (h,) in rows)


@pytest.fixture(scope="module")
def first_run(cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The dataset ingested on a client workspace (raw data to the bucket), ``mmr_prepare`` triggered, the chain
    waited for."""
    tmp = tmp_path_factory.mktemp("client")
    began = time.monotonic()
    client = make_workspace(tmp / "ws", PARAMS)
    out = subprocess.run([str(BIN / "mmr"), "ingest", str(tiny_dataset(tmp / "src")), "--name", DATASET],
                         env=client_env(cluster, MMR_HOME=str(client)), cwd=client, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    TIMINGS["ingest (raw data pushed to the bucket)"] = round(time.monotonic() - began, 1)
    began = time.monotonic()
    while not {d for (d,) in query(cluster, "SELECT dag_id FROM dag")} >= {"mmr_prepare", "mmr_model", "mmr_serve"}:
        assert time.monotonic() - began < 180, report(cluster)
        time.sleep(2)
    TIMINGS["waiting for the DAGs to be parsed"] = round(time.monotonic() - began, 1)
    began = time.monotonic()
    airflow(cluster, "dags", "trigger", "mmr_prepare", "--conf", json.dumps({"dataset": DATASET}))
    wait_served(cluster, 1, began)
    TIMINGS["chain prepare -> model -> serve"] = round(time.monotonic() - began, 1)
    return {"client": client}


def test_the_hook_reaches_every_server_of_the_cluster(cluster: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tests.helpers.workspace import REPO

    monkeypatch.syspath_prepend(str(REPO / "plugins"))
    from mmr_airflow import MmrHook

    for name, value in client_env(cluster).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AIRFLOW_CONN_MILVUS_DEFAULT", cluster["env"]["MMR_MILVUS_URI"])
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", cluster["urls"]["mlflow"])
    ok, message = MmrHook().test_connection()
    assert ok, message
    assert all(f"{name} (" in message for name in ("milvus", "mlflow", "data store", "lock coordinator")), message
    assert cluster["env"]["AWS_SECRET_ACCESS_KEY"] not in message
    sys.modules.pop("mmr_airflow", None)


def test_the_asset_chain_runs_on_both_workers_and_serves_from_the_servers(cluster: dict[str, Any],
                                                                          first_run: dict[str, Any]) -> None:
    runs = query(cluster, "SELECT dag_id, run_type, state FROM dag_run ORDER BY id")
    assert [(d, s) for d, _, s in runs] == [("mmr_prepare", "success"), ("mmr_model", "success"),
                                            ("mmr_serve", "success")], runs
    assert set(hosts(cluster)) == {"worker-a", "worker-b"}, hosts(cluster)  # both workers ran tasks
    shard_hosts = hosts(cluster, "embed_shard")
    assert len(shard_hosts) == 3 and set(shard_hosts) == {"worker-a", "worker-b"}, shard_hosts
    secret = cluster["env"]["AWS_SECRET_ACCESS_KEY"]
    for worker in cluster["workers"].values():  # the store's secret key is in every worker's environment...
        logs = [p for p in Path(worker["airflow_home"]).rglob("*.log")]
        assert logs and not [p for p in logs if secret in p.read_text(errors="replace")]  # ...and in no task log
    assert_served(cluster, first_run["client"])


def assert_served(cluster: dict[str, Any], client: Path) -> str:
    """The champion in the bucket and loadable through the MLflow server, the alias on a verified collection, and
    ``mmr serve`` answering a search. Returns the champion's version."""
    import boto3
    import mlflow

    env = client_env(cluster)
    mlflow.set_tracking_uri(cluster["urls"]["mlflow"])
    model = mlflow.MlflowClient().get_model_version_by_alias(f"mmr-{DATASET}", "champion")
    s3 = boto3.client("s3", endpoint_url=cluster["urls"]["s3"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mmr", Prefix="mlflow/").get("Contents", [])]
    assert any(model.run_id in k for k in keys), (model.run_id, keys[:20])  # the artifacts are in the bucket
    loaded = mlflow.pyfunc.load_model(f"models:/mmr-{DATASET}@champion")  # downloaded through the server
    import pandas as pd

    vectors = loaded.predict(pd.DataFrame([{"text": "a red square"}]))
    assert vectors.shape[0] == 1 and vectors.shape[1] > 0

    from mmretrieval.backends.index import MilvusIndex

    with MilvusIndex(env["MMR_MILVUS_URI"]) as ix:
        collection = ix.resolve_alias(f"mmr_{DATASET}")
        assert collection is not None and collection.startswith(f"mmr_{DATASET}__m{model.version}__d"), collection
        assert ix.properties(collection)["mmr.state"] == "verified"
    search_through_mmr_serve(cluster, client)
    return str(model.version)


def search_through_mmr_serve(cluster: dict[str, Any], client: Path) -> None:
    import httpx

    log = client.parent / "serve.log"
    with mmr_serve(client, DATASET, log, timeout=180, environ=client_env(cluster)) as server:
        hits = httpx.post(f"{server.url}/search", json={"text": "a red square", "k": 3}, timeout=60)
        assert hits.status_code == 200 and len(hits.json()) == 3, hits.text
    assert cluster["env"]["AWS_SECRET_ACCESS_KEY"] not in log.read_text(encoding="utf-8", errors="replace")


def test_a_worker_killed_mid_task_is_outlived_by_the_run(cluster: dict[str, Any], first_run: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """A second model + serve run; the worker running ``train`` is SIGKILLed (its whole process group: the host
    died). The scheduler sees the task's heartbeat stop, the task is retried on the other worker, the run completes,
    and what is served is a committed, verified output."""
    began = time.monotonic()
    airflow(cluster, "dags", "trigger", "mmr_model", "--conf", json.dumps({"dataset": DATASET}))
    while True:
        running = query(cluster, "SELECT hostname, try_number FROM task_instance WHERE dag_id = 'mmr_model' "
                                 "AND task_id = 'train' AND state = 'running' AND hostname != ''")
        if running:
            break
        assert time.monotonic() - began < 240, report(cluster)
        time.sleep(0.5)
    victim = running[0][0]
    kill_tree(cluster["pids"][victim])  # the worker, its pool, the task's supervisor and the task process
    killed_at = time.monotonic()
    wait_served(cluster, 2, began)
    TIMINGS["kill -> run served again"] = round(time.monotonic() - killed_at, 1)
    train = query(cluster, "SELECT hostname, try_number, state FROM task_instance WHERE dag_id = 'mmr_model' "
                           "AND task_id = 'train' ORDER BY try_number DESC")
    survivor = ({"worker-a", "worker-b"} - {victim}).pop()
    assert train[0][0] == survivor and train[0][1] >= 2 and train[0][2] == "success", train
    later = query(cluster, "SELECT DISTINCT hostname FROM task_instance WHERE dag_id = 'mmr_serve' AND run_id = "
                           "(SELECT run_id FROM dag_run WHERE dag_id = 'mmr_serve' ORDER BY id DESC LIMIT 1)")
    assert {h for (h,) in later} == {survivor}, later
    assert_served(cluster, first_run["client"])  # the champion the second gate chose, verified and answering
    every_committed_output_reads_back(cluster, tmp_path)


def every_committed_output_reads_back(cluster: dict[str, Any], tmp_path: Path) -> None:
    """Every unit committed to the bucket pulls into a fresh folder with its recorded sizes and hashes: no reader
    can meet half an output (an upload without its commit record is invisible)."""
    from mmretrieval.backends.store import Store

    env = client_env(cluster)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        os.environ[name] = env[name]
    store = Store(env["MMR_DATA_URL"])
    units = store.units("")
    assert any(u.startswith(f"embeddings/{DATASET}/v") for u in units), units
    for i, unit in enumerate(units):
        assert store.pull(unit, tmp_path / f"u{i}" / Path(unit).name) is not None, unit
