"""docker-compose.yml checked against the real binaries it starts, without Docker (issue 18): the MLflow server with
the service's own flags, ``mmr validate`` in a copy of the workspace laid out as the compose mounts lay it out, and
Airflow's migration check (the init job's exit and its health check) on a real unmigrated SQLite home."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.compose import command_words, covered, mlflow_server_args, services, workspace_mounts
from tests.helpers.files import tiny_dataset
from tests.helpers.servers import free_port
from tests.helpers.workspace import BIN, FAST_PARAMS, REPO, mmr

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


def git_dvc_workspace(root: Path) -> Path:
    """A workspace like the project folder on a server: a git repository with DVC (SCM mode) and a dataset."""
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(FAST_PARAMS, encoding="utf-8")
    shutil.copyfile(REPO / "dvc.yaml", root / "dvc.yaml")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True, env=env)
    out = mmr("ingest", str(tiny_dataset(root.parent / "src")), "--name", "tiny", cwd=root,
              env={"MMR_HOME": str(root)})
    assert out.returncode == 0, out.stderr
    return root


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_mmr_validate_runs_in_the_workspace_as_the_compose_mounts_lay_it_out(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for var in CLEAN_ENV:
        monkeypatch.delenv(var, raising=False)
    host = git_dvc_workspace(tmp_path / "project")
    container = tmp_path / "container" / "workspace"
    container.mkdir(parents=True)
    mounts = workspace_mounts(services()["airflow-scheduler"])
    for rel, source in sorted(mounts.items()):  # "." first, then anything mounted inside it
        src, dst = (host / source).resolve(), container / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
        elif src.exists():
            shutil.copyfile(src, dst)
    before = files_under(container)
    out = mmr("validate", "--dataset", "tiny", cwd=container, env={"MMR_HOME": str(container)})
    assert out.returncode == 0, f"mounts {mounts}: {out.stderr[-800:]}"
    written = sorted(files_under(container) - before)
    assert "data/validated/tiny/report.json" in written
    lost = [rel for rel in written if not covered(mounts, rel)]
    assert lost == [], f"written outside the mounts {mounts}, lost with the container: {lost}"


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
    init = command_words(svc["airflow-init"])
    assert init[0] == "airflow"
    migrated = airflow(home, *init[1:], timeout=600)
    assert migrated.returncode == 0, migrated.stderr[-800:]
    after = airflow(home, *check[1:])
    assert after.returncode == 0, after.stdout + after.stderr
    for name in ("airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert svc[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


