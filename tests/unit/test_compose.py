"""docker-compose.yml follows the compose specification and has none of the defects that kept the stack from
completing a run (issue 18): each check below fails on the file before that issue. The checks against real
binaries (the MLflow server, ``mmr validate`` in a container-like layout, Airflow's migration check) are in
tests/integration/test_compose_stack.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.compose import (
    COMPOSE,
    command_words,
    compose,
    mlflow_server_args,
    option,
    services,
    workspace_mounts,
)
from tests.helpers.workspace import REPO

WORKERS = ("airflow-worker-a", "airflow-worker-b")
AIRFLOW_COMPONENTS = ("airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", *WORKERS)
RESTARTS = ("always", "unless-stopped", "on-failure")


def test_compose_has_milvus_mlflow_airflow_and_their_backends() -> None:
    assert {"etcd", "minio", "milvus", "mlflow", "mlflow-db", "airflow-db", "airflow-init", "redis",
            *AIRFLOW_COMPONENTS} <= set(services())


def test_the_file_validates_against_the_compose_specification() -> None:
    """check-jsonschema (PyPI) ships the compose-spec JSON schema: no Docker, no network needed."""
    exe = Path(sys.executable).with_name("check-jsonschema")
    assert exe.is_file(), "check-jsonschema is pinned in requirements.txt: run `make` to install it"
    out = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_validator_rejects_a_file_that_breaks_the_specification(tmp_path: Path) -> None:
    bad = compose()
    bad["services"]["milvus"]["depends_on"]["etcd"]["condition"] = "service_finished"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    exe = Path(sys.executable).with_name("check-jsonschema")
    out = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "service_finished" in out.stdout + out.stderr


def test_every_mmr_variable_compose_sets_is_read_by_the_library() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "mmretrieval").rglob("*.py"))
    env = services()["airflow-worker-a"]["environment"]
    mmr_vars = [k for k in env if k.startswith("MMR_")]
    assert {"MMR_MILVUS_URI", "MMR_MLFLOW_TRACKING_URI", "MMR_DATA_URL", "MMR_LOCK_URL"} <= set(mmr_vars)
    for var in mmr_vars:
        assert re.search(rf"[\"']{var}[\"']", source), f"{var} is set in compose but never read"
    assert env["MMR_MILVUS_URI"].startswith("http://milvus:")
    assert env["MMR_MLFLOW_TRACKING_URI"].startswith("http://mlflow:")


def test_mlflow_allows_the_host_name_the_containers_use() -> None:
    """MLflow 3 answers 403 "Invalid Host header" to names not in --allowed-hosts, matched as host:port."""
    uri = services()["airflow-scheduler"]["environment"]["MMR_MLFLOW_TRACKING_URI"]
    allowed = (option(mlflow_server_args(), "--allowed-hosts") or "").split(",")
    assert uri.removeprefix("http://").rstrip("/") in allowed, f"--allowed-hosts {allowed} lacks {uri}"
    assert "localhost:5000" in allowed  # the UI from the host, through the published port


def test_airflow_components_start_after_the_migration_and_restart() -> None:
    svc = services()
    assert command_words(svc["airflow-init"])[:3] == ["airflow", "db", "migrate"]
    assert svc["airflow-init"].get("restart") == "no"
    assert svc["airflow-init"]["depends_on"]["airflow-db"]["condition"] == "service_healthy"
    for name in AIRFLOW_COMPONENTS:
        deps = svc[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully", name
        assert svc[name].get("restart") in RESTARTS, f"{name} has no restart policy"


def test_each_worker_has_its_own_workspace_and_no_workspace_is_shared() -> None:
    """As tests/integration/test_cluster.py runs it: data travels through the bucket, never a shared folder."""
    svc = compose()["services"]
    named = compose().get("volumes", {})
    sources: dict[str, list[str]] = {}
    for name in AIRFLOW_COMPONENTS:
        for spec in svc[name].get("volumes", []):
            sources.setdefault(str(spec).split(":")[0], []).append(name)
    assert all(len(users) == 1 for users in sources.values()), sources  # nothing mounted by two components
    for name in WORKERS:
        mounts = workspace_mounts(svc[name])
        assert list(mounts) == ["."] and mounts["."] in named, f"{name}: {mounts}"  # a named volume, the whole home
    for name in set(AIRFLOW_COMPONENTS) - set(WORKERS):
        assert workspace_mounts(svc[name]) == {}, name


def test_the_workers_use_celery_through_redis_and_hand_over_through_the_bucket() -> None:
    svc = services()
    for name in AIRFLOW_COMPONENTS:
        env = svc[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:"), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql"), name
    for name in WORKERS:
        assert command_words(svc[name])[:3] == ["airflow", "celery", "worker"], name
    env = svc["airflow-worker-a"]["environment"]
    bucket = env["MMR_DATA_URL"].removeprefix("s3://").split("/")[0]
    assert env["AWS_ENDPOINT_URL"].startswith("http://minio:")
    assert (option(mlflow_server_args(), "--artifacts-destination") or "").startswith(f"s3://{bucket}/")
    assert env["MMR_LOCK_URL"].startswith("postgresql://")


def test_a_one_shot_service_creates_the_bucket_mlflow_writes_to() -> None:
    svc = services()
    destination = option(mlflow_server_args(), "--artifacts-destination") or ""
    assert destination.startswith("s3://")
    bucket = destination.removeprefix("s3://").split("/")[0]
    makers = [n for n, s in svc.items() if re.search(rf"\bmc mb\b.*\b{re.escape(bucket)}\b",
                                                      " ".join(command_words(s)))]
    assert makers, f"no service creates the bucket {bucket!r}"
    assert svc[makers[0]]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert svc["mlflow"]["depends_on"][makers[0]]["condition"] == "service_completed_successfully"


def test_there_is_a_triggerer() -> None:
    assert any(command_words(s)[-2:] == ["airflow", "triggerer"] for s in services().values())


def test_the_containers_that_run_training_and_embedding_reserve_gpus() -> None:
    svc = services()
    for name in WORKERS:  # the Celery workers run the tasks
        devices = svc[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert any("gpu" in d.get("capabilities", []) for d in devices), f"{name} reserves no GPU"
    assert "deploy" not in svc["airflow-scheduler"]  # it schedules only


def test_the_image_knows_its_code_version_without_git() -> None:
    build = services()["airflow-scheduler"]["build"]
    assert isinstance(build, dict) and "MMR_CODE_VERSION" in build.get("args", {})
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG MMR_CODE_VERSION\b", dockerfile, re.M)
    assert re.search(r"^ENV MMR_CODE_VERSION=\$\{MMR_CODE_VERSION\}", dockerfile, re.M)


def test_the_code_version_comes_from_the_environment_outside_git(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mmretrieval.backends.tracking import git_sha

    monkeypatch.delenv("MMR_CODE_VERSION", raising=False)
    assert git_sha(tmp_path) == "unknown"
    monkeypatch.setenv("MMR_CODE_VERSION", "0123abc")
    assert git_sha(tmp_path) == "0123abc"
    if shutil.which("git") and (REPO / ".git").exists():
        assert git_sha(REPO) not in ("0123abc", "unknown")  # a checkout's own commit wins


def test_every_service_has_a_health_check_and_waits_on_health_or_completion() -> None:
    svc = services()
    for name, s in svc.items():
        assert "test" in s.get("healthcheck", {}), f"{name} has no health check"
        deps = s.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on as a list waits only for the start"
        for dep, cond in deps.items():
            one_shot = svc[dep].get("restart") == "no"
            want = "service_completed_successfully" if one_shot else "service_healthy"
            assert cond.get("condition") == want, f"{name} -> {dep}: {cond} (want {want})"


def test_docker_compose_config_accepts_the_file_when_the_plugin_exists() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose plugin on this machine; the specification and structure checks above ran")
    out = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
