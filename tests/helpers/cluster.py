"""The scale-out cluster of ``scripts/cluster.py`` for the cluster test: started as a subprocess, read through its
``cluster.json``, queried through its Postgres, stopped at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.processes import stop_groups
from tests.helpers.workspace import BIN, REPO

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REQUIRED = {"postgres": PG_BIN / "postgres", "redis-server": Path("/usr/bin/redis-server"),
            "moto_server": BIN / "moto_server",
            "Milvus (make milvus-server-venv)": REPO / ".venv-milvus" / "bin" / "python"}


def missing() -> list[str]:
    """The servers the cluster needs that this machine lacks."""
    return [name for name, path in REQUIRED.items() if not path.exists()]


@contextmanager
def running_cluster(params: str, timeout: float = 420.0) -> Iterator[dict[str, Any]]:
    """``scripts/cluster.py`` on a fresh folder (the workers' params: ``params``); yields its ``cluster.json`` once
    every server answers. Stops it at the end (SIGTERM, then SIGKILL to its process group) and removes the folder."""
    root = Path(tempfile.mkdtemp(prefix="mmr-cluster-test-"))  # not under pytest's 0700 tmp: postgres must reach it
    root.chmod(0o711)
    (root / "params.yaml").write_text(params, encoding="utf-8")
    log = open(root / "cluster.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(BIN / "python"), str(REPO / "scripts" / "cluster.py"), "--root", str(root / "c"),
                             "--params", str(root / "params.yaml")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    info_file = root / "c" / "cluster.json"
    try:
        deadline = time.monotonic() + timeout
        while not info_file.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the cluster did not start:\n{(root / 'cluster.out').read_text()[-5000:]}")
            time.sleep(1)
        time.sleep(0.5)  # written in one call; let the READY line follow
        yield json.loads(info_file.read_text())
    finally:
        stop_groups([proc], timeout=90)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every process below it (task processes run in process groups of their own): a host
    that dies. Returns the pids killed."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


def client_env(info: dict[str, Any], **extra: str) -> dict[str, str]:
    """This process's environment without any MMR_/AIRFLOW/MLflow/AWS variable, plus the cluster's client env."""
    prefixes = ("AIRFLOW_", "AIRFLOW__", "MMR_", "MLFLOW_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | info["env"] | extra


def airflow(info: dict[str, Any], *args: str, timeout: int = 180) -> str:
    """``airflow ARGS`` against the cluster (the scheduler's home); stdout, or an AssertionError with the output."""
    out = subprocess.run([str(BIN / "airflow"), *args], env=client_env(info), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"airflow {' '.join(args)}: {(out.stdout + out.stderr)[-3000:]}"
    return out.stdout


def query(info: dict[str, Any], sql: str, *args: Any) -> list[tuple]:
    """Rows of ``sql`` on the Airflow metadata database."""
    import psycopg2

    con = psycopg2.connect(info["urls"]["postgres"] + "/airflow")
    try:
        with con.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        con.close()


def report(info: dict[str, Any]) -> str:
    """Dag runs, unfinished task instances and the tail of each component's log: an assertion message."""
    runs = query(info, "SELECT dag_id, run_id, state FROM dag_run ORDER BY id")
    tasks = query(info, "SELECT dag_id, task_id, map_index, state, try_number, hostname FROM task_instance "
                        "WHERE state IS NULL OR state != 'success' ORDER BY dag_id, task_id")
    logs = "\n".join(f"--- {name}\n{Path(path).read_text(errors='replace')[-1500:]}"
                     for name, path in info["logs"].items() if name.startswith(("worker", "scheduler")))
    tails = sorted((p for p in Path(info["root"]).rglob("*.log") if "task_id=" in str(p)),
                   key=lambda p: p.stat().st_mtime)[-3:]
    task_logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-4000:]}" for p in tails)
    return f"dag runs: {runs}\nunfinished tasks: {tasks}\n{task_logs}\n{logs}"
