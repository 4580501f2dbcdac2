"""The Asset-chained DAGs under a real Airflow: api-server, scheduler (LocalExecutor) and dag-processor on SQLite in a
fresh Airflow home, with nothing unpaused by hand. Two datasets prepared back to back are both trained and served.

Needs the ``airflow`` of this environment and free CPU for a few minutes (about 3 on 2 cores); bounded by
:data:`DEADLINE_S`. Everything it starts is stopped at the end, and on a failure the assertion message carries the
dag runs, the task states and the tail of the logs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.files import tiny_dataset
from tests.helpers.processes import stop_groups
from tests.helpers.servers import free_port
from tests.helpers.workspace import BIN, FAST_PARAMS, REPO, make_workspace

pytestmark = [pytest.mark.integration, pytest.mark.live_airflow]
DATASETS = ("first", "second")
DEADLINE_S = 480  # measured about 3 min on the shared 2-core machine
CHAIN = ("mmr_prepare", "mmr_model", "mmr_serve")


def airflow_env(home: Path, workspace: Path) -> dict[str, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__", "MMR_", "MLFLOW_"))}
    return env | {
        "MMR_HOME": str(workspace),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # Airflow's default: the DAGs must not need unpausing
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # parse once: the DAG file does not change
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }


def airflow(env: dict[str, str], *args: str, timeout: int = 180) -> str:
    out = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"airflow {' '.join(args)}: {(out.stdout + out.stderr)[-3000:]}"
    return out.stdout


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def served(db: Path) -> list[str]:
    """Datasets named by ``mmr_serving_collection`` events: each one went through the whole chain."""
    rows = query(db, "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                     "WHERE a.name = 'mmr_serving_collection' ORDER BY e.id")
    return [json.loads(extra or "{}").get("dataset") for (extra,) in rows]


def report(db: Path, home: Path) -> str:
    runs = query(db, "SELECT dag_id, run_id, run_type, state FROM dag_run ORDER BY id")
    tasks = query(db, "SELECT dag_id, task_id, map_index, state, try_number FROM task_instance "
                      "WHERE state IS NULL OR state != 'success' ORDER BY dag_id, task_id")
    logs = sorted((home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-3:]
    tails = "\n".join(f"--- {p.relative_to(home)}\n{p.read_text(errors='replace')[-2500:]}" for p in logs)
    components = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                           for p in sorted(home.glob("*.out")))
    return f"dag runs: {runs}\nunfinished tasks: {tasks}\n{tails}\n{components}"


@pytest.fixture
def live_airflow(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A fresh Airflow home (migrated, the Milvus writer pool created) with api-server, scheduler and dag-processor."""
    workspace = make_workspace(tmp_path / "ws", FAST_PARAMS.replace("datasets: [demo]",
                                                                    f"datasets: [{', '.join(DATASETS)}]"))
    home = tmp_path / "airflow"
    home.mkdir()
    env = airflow_env(home, workspace)
    for i, name in enumerate(DATASETS):  # through the CLI: the workspace's settings, not this process's
        out = subprocess.run([str(BIN / "mmr"), "ingest", str(tiny_dataset(tmp_path / f"src_{name}", 4 + i)),
                              "--name", name], env=env, cwd=workspace, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    airflow(env, "db", "migrate", timeout=300)
    airflow(env, "pools", "set", "mmr_milvus_writer", "1", "writers of the Milvus index")  # README: once per home
    procs = []
    for component in (["api-server", "--workers", "1"], ["scheduler"], ["dag-processor"]):
        log = open(home / f"{component[0]}.out", "wb")  # noqa: SIM115 - closed with the process below
        procs.append((subprocess.Popen([str(BIN / "airflow"), *component], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True), log))
    try:
        yield env, workspace
    finally:
        stop_groups([proc for proc, _ in procs], timeout=30)  # each component is its own process group
        for _, log in procs:
            log.close()


def test_the_asset_chain_fires_by_itself_and_serves_two_datasets_prepared_back_to_back(
        live_airflow: tuple[dict[str, str], Path]) -> None:
    env, workspace = live_airflow
    home = Path(env["AIRFLOW_HOME"])
    db = home / "airflow.db"
    start = time.monotonic()
    while not {d for (d,) in query(db, "SELECT dag_id FROM dag")} >= set(CHAIN):  # the dag-processor parsed them
        assert time.monotonic() - start < 180, report(db, home)
        time.sleep(2)
    assert query(db, f"SELECT dag_id, is_paused FROM dag WHERE dag_id IN {CHAIN} ORDER BY dag_id") == [
        ("mmr_model", 0), ("mmr_prepare", 0), ("mmr_serve", 0)]  # created unpaused, nobody unpaused them
    for name in DATASETS:  # back to back: the second is triggered while the first one runs
        airflow(env, "dags", "trigger", "mmr_prepare", "--conf", json.dumps({"dataset": name}))
    while sorted(set(served(db))) != sorted(DATASETS):
        failed = query(db, "SELECT dag_id, run_id FROM dag_run WHERE state = 'failed'")
        assert not failed and time.monotonic() - start < DEADLINE_S, report(db, home)
        time.sleep(3)
    elapsed = time.monotonic() - start
    runs = query(db, "SELECT dag_id, run_type, state FROM dag_run ORDER BY id")
    assert {(d, t) for d, t, _ in runs} == {("mmr_prepare", "manual"), ("mmr_model", "asset_triggered"),
                                            ("mmr_serve", "asset_triggered")}, runs  # the chain started itself
    # every dataset event reached the next DAG: two cleaned, two champions decided, two collections served
    for asset in ("mmr_clean_data", "mmr_champion_model", "mmr_serving_collection"):
        names = [json.loads(e or "{}").get("dataset") for (e,) in query(
            db, f"SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = '{asset}'")]
        assert sorted(names) == sorted(DATASETS), (asset, names)
    print(f"live scheduler: both datasets served {elapsed:.0f} s after the DAGs were parsed; runs {runs}")

    from mmretrieval.backends import tracking
    from mmretrieval.backends.index import MilvusIndex
    from mmretrieval.core.settings import get_settings

    settings = get_settings(workspace)
    with MilvusIndex(settings.milvus_uri) as ix:
        for name in DATASETS:
            champion = tracking.require_alias(settings, name, tracking.CHAMPION)
            collection = ix.resolve_alias(settings.alias(name))
            assert collection is not None and collection.startswith(f"mmr_{name}__m{champion.version}__d")
            assert ix.properties(collection)["mmr.state"] == "verified"
