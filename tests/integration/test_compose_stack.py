"""docker-compose.yml checked against the real binaries it starts, without Docker (issue 18): the MLflow server with
the service's own flags, and Airflow's migration check (the init job's exit and its health check) on a real
unmigrated SQLite home. The workers' topology (own workspace each, hand-off through the bucket, Celery over Redis)
runs for real in tests/integration/test_cluster.py."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.compose import command_words, mlflow_server_args, services
from tests.helpers.servers import free_port
from tests.helpers.workspace import BIN

pytestmark = pytest.mark.integration

CLEAN_ENV = ("MMR_HOME", "MMR_PARAMS", "MMR_MILVUS_URI", "MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI",
             "MMR_MLFLOW_ARTIFACTS", "MMR_DATASET", "AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")


def status(url: str, host: str) -> int:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_real_mlflow_server_with_the_compose_flags_accepts_the_container_host_name(tmp_path: Path) -> None:
    """The service's own arguments; only what needs the other containers is replaced (Postgres -> SQLite, S3 -> a
    folder) and the port (the Host header still says mlflow:5000, as the containers send it)."""
    args = mlflow_server_args()
    keep: list[str] = []
    replaced = {"--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--artifacts-destination": str(tmp_path / "artifacts"), "--host": "127.0.0.1", "--workers": "1"}
    i = 0
    while i < len(args):
        if args[i] in replaced or args[i] == "--port":
            i += 2
            continue
        keep.append(args[i])
        i += 1
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", *keep, "--port", str(port)]
    for k, v in replaced.items():
        cmd += [k, v]
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if status(f"{base}/health", "localhost") == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
            time.sleep(1)
        else:
            pytest.fail("mlflow server did not answer /health within 120 s")
        api = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        uri = services()["airflow-scheduler"]["environment"]["MMR_MLFLOW_TRACKING_URI"]
        assert status(api, uri.removeprefix("http://").rstrip("/")) == 200  # mlflow:5000, from a container
        assert status(api, "localhost:5000") == 200  # the UI through the published port
        assert status(api, "attacker.example") == 403  # the DNS-rebinding guard is still on
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def airflow(home: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV and not k.startswith("AIRFLOW__")}
    env |= {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_airflow_components_wait_for_an_init_job_whose_exit_and_health_check_mean_migrated(tmp_path: Path) -> None:
    """On an unmigrated home Airflow's own check fails (what made the components exit); after the init service's
    command it passes: so `service_completed_successfully` on airflow-init is the right gate."""
    svc = services()
    check = svc["airflow-init"]["healthcheck"]["test"][1:]
    assert check[:3] == ["airflow", "db", "check-migrations"]
    home = tmp_path / "airflow"
    home.mkdir()
    before = airflow(home, *check[1:])
    assert before.returncode != 0, before.stdout
    words = command_words(svc["airflow-init"])
    steps = _split(words, "&&")
    assert steps[0] == ["airflow", "db", "migrate"] and all(step[0] == "airflow" for step in steps), steps
    for step in steps:  # the migration, then the Milvus writer pool the DAG's publish tasks need
        done = airflow(home, *step[1:], timeout=600)
        assert done.returncode == 0, done.stderr[-800:]
    after = airflow(home, *check[1:])
    assert after.returncode == 0, after.stdout + after.stderr
    assert "mmr_milvus_writer" in airflow(home, "pools", "list").stdout
    for name in ("airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker-a",
                 "airflow-worker-b"):
        assert svc[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"




def _split(words: list[str], separator: str) -> list[list[str]]:
    """``a b && c d`` -> ``[[a, b], [c, d]]``."""
    steps: list[list[str]] = [[]]
    for word in words:
        if word == separator:
            steps.append([])
        else:
            steps[-1].append(word)
    return steps
