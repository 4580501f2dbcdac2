"""Start the scale-out cluster on one machine, on 127.0.0.1 free ports, under one temporary folder; stop it cleanly.

What runs (each server its own process group, logs under ``<root>/logs/``):

* PostgreSQL 15 (Debian's ``/usr/lib/postgresql/15/bin``): the Airflow metadata (``airflow``), the MLflow backend
  store (``mlflow``) and the per-dataset advisory locks (``mmr``, ``MMR_LOCK_URL``); run as the ``postgres`` user
  when this script runs as root (postgres refuses root).
* redis-server (Debian): the Celery broker.
* ``moto_server`` (PyPI ``moto[server]``): the S3-compatible object store, bucket ``mmr``; stands for S3/MinIO.
* ``mlflow server``: Postgres backend store, artifacts in ``s3://mmr/mlflow`` served through the server.
* the Milvus standalone server (``scripts/milvus_server.py`` with ``.venv-milvus``).
* Airflow (CeleryExecutor): api-server, scheduler and dag-processor in ``<root>/airflow``, and two Celery workers
  (``worker-a``, ``worker-b``), each with its own ``AIRFLOW_HOME`` and its own empty ``MMR_HOME`` under
  ``<root>/workers/<name>/``: no folder is shared between them or with the scheduler. The repository's ``dags/`` and
  ``plugins/`` (code) are read by all; data goes through the bucket (``MMR_DATA_URL``).

Usage::

    .venv/bin/python scripts/cluster.py [--root DIR] [--params params.yaml] [--no-milvus]

Prints ``READY <root>/cluster.json`` once every server answers, then waits; SIGTERM/SIGINT stops everything
(SIGTERM to each process group, SIGKILL after ``--stop-timeout`` seconds) and exits 0. ``cluster.json`` holds the
ports, the client environment (``env``: what ``mmr`` and ``airflow`` on this machine need to use the cluster), the
workers' process ids and the start-up time of each server (``timings``); ``cluster.env`` holds the same environment
as ``export`` lines for a shell. Exit status 1 when a server does not start (its log tail is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
HOST = "127.0.0.1"
BUCKET = "mmr"
WORKERS = ("worker-a", "worker-b")
S3_KEYS = {"AWS_ACCESS_KEY_ID": "mmr-cluster", "AWS_SECRET_ACCESS_KEY": "mmr-cluster-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}  # moto accepts any keys; real S3 would take the deployment's own
QUIET = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False",
         "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
         "OMP_NUM_THREADS": "1"}


class StartError(RuntimeError):
    """A server did not come up; the message names it and carries its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen | None, log: Path | None,
             timeout: float) -> None:
    """Poll ``check`` until it is true; :class:`StartError` when ``proc`` died or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc is not None and proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.is_file() else ""
            state = f"exited {proc.returncode}" if proc is not None and proc.poll() is not None else "timed out"
            raise StartError(f"{what} did not start ({state}); log {log}:\n{tail}")
        time.sleep(0.5)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - loopback URLs built here
        return bool(200 <= response.status < 300)


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


class Cluster:
    """The servers of one cluster under ``root``; :meth:`start` brings them up, :meth:`stop` takes them down."""

    def __init__(self, root: Path, params: Path | None, milvus: bool = True, stop_timeout: float = 20.0) -> None:
        self.root, self.milvus, self.stop_timeout = root.resolve(), milvus, stop_timeout
        self.params = params.resolve() if params else None
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.timings: dict[str, float] = {}
        self.ports = {name: free_port() for name in ("postgres", "redis", "s3", "mlflow", "milvus", "api")}
        self.ports |= {f"{w}-logs": free_port() for w in WORKERS}
        self.secret = secrets.token_hex(16)
        self.pg_user = "postgres" if os.getuid() == 0 else None

    # -- processes --------------------------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
              user: str | None = None) -> subprocess.Popen:
        """``argv`` in its own process group, output to ``logs/<name>.log``."""
        log = self.root / "logs" / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env={**os.environ, **QUIET, **(env or {})}, cwd=cwd or self.root,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, user=user)
        self.procs[name], self.logs[name] = proc, log
        return proc

    def stop(self) -> None:
        """SIGTERM to every process group (newest first), SIGKILL to those still there after ``stop_timeout``, and
        to any process below them (Airflow runs each task in a process group of its own)."""
        import psutil

        below = []
        for proc in self.procs.values():
            try:
                below += psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)  # also the group's leftovers (pool children)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for child in below:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass

    def timed(self, name: str, start: Callable[[], None]) -> None:
        began = time.monotonic()
        start()
        self.timings[name] = round(time.monotonic() - began, 1)

    # -- the servers ------------------------------------------------------------------------------------------------
    def start_postgres(self) -> None:
        pg = self.root / "postgres"
        pg.mkdir()
        if self.pg_user:
            shutil.chown(pg, self.pg_user)
        pg.chmod(0o700)
        init = subprocess.run([str(PG_BIN / "initdb"), "-D", str(pg / "data"), "-U", "mmr", "-A", "trust", "-E",
                               "UTF8", "--no-sync"], capture_output=True, text=True, user=self.pg_user, cwd=pg)
        if init.returncode != 0:  # e.g. the postgres user cannot reach a folder above --root
            raise StartError(f"initdb failed (as {self.pg_user or 'this user'}):\n{init.stdout}{init.stderr}")
        settings = {"listen_addresses": HOST, "port": self.ports["postgres"], "unix_socket_directories": str(pg),
                    "max_connections": 300, "shared_buffers": "64MB", "fsync": "off",
                    "synchronous_commit": "off", "full_page_writes": "off"}  # a throwaway cluster: speed over safety
        argv = [str(PG_BIN / "postgres"), "-D", str(pg / "data")]
        proc = self.spawn("postgres", argv + [a for k, v in settings.items() for a in ("-c", f"{k}={v}")],
                          user=self.pg_user, cwd=pg)
        wait_for("PostgreSQL", lambda: subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", HOST, "-p", str(self.ports["postgres"])]).returncode == 0,
            proc, self.logs["postgres"], 60)
        import psycopg2

        con = psycopg2.connect(host=HOST, port=self.ports["postgres"], user="mmr", dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            for db in ("airflow", "mlflow", "mmr"):  # mmr: the per-dataset advisory locks
                cur.execute(f"CREATE DATABASE {db}")
        con.close()

    def start_redis(self) -> None:
        (self.root / "redis").mkdir()
        proc = self.spawn("redis", ["redis-server", "--bind", HOST, "--port", str(self.ports["redis"]),
                                    "--dir", str(self.root / "redis"), "--save", "", "--appendonly", "no"])
        wait_for("Redis", lambda: port_open(self.ports["redis"]), proc, self.logs["redis"], 30)

    def start_s3(self) -> None:
        proc = self.spawn("s3", [str(BIN / "moto_server"), "-H", HOST, "-p", str(self.ports["s3"])])
        wait_for("moto_server", lambda: http_ok(f"{self.s3_url}/moto-api/"), proc, self.logs["s3"], 60)
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_url, **{k.lower(): v for k, v in S3_KEYS.items()
                                                            if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)

    def start_mlflow(self) -> None:
        argv = [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(self.ports["mlflow"]), "--workers", "1",
                "--backend-store-uri", self.sqlalchemy_url("mlflow"), "--serve-artifacts",
                "--artifacts-destination", f"s3://{BUCKET}/mlflow"]
        proc = self.spawn("mlflow", argv, env={**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": self.s3_url})
        wait_for("MLflow server", lambda: http_ok(f"{self.mlflow_url}/health"), proc, self.logs["mlflow"], 180)

    def start_milvus(self) -> None:
        python = REPO / ".venv-milvus" / "bin" / "python"
        if not python.exists():
            raise StartError(f"{python} is missing: run `make milvus-server-venv` first")
        proc = self.spawn("milvus", [str(python), str(REPO / "scripts" / "milvus_server.py"), "--base-dir",
                                     str(self.root / "milvus"), "--port", str(self.ports["milvus"])])
        wait_for("Milvus server", lambda: "READY" in self.logs["milvus"].read_text(errors="replace"), proc,
                 self.logs["milvus"], 240)

    def start_airflow(self) -> None:
        """Migrate the metadata, create the writer pool, then the api-server, scheduler and dag-processor."""
        env = self.airflow_env(self.root / "airflow")
        for argv in (["db", "migrate"], ["pools", "set", "mmr_milvus_writer", "1", "writers of the Milvus index"]):
            out = subprocess.run([str(BIN / "airflow"), *argv], env={**os.environ, **QUIET, **env},
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise StartError(f"airflow {' '.join(argv)} failed:\n{(out.stdout + out.stderr)[-3000:]}")
        api = self.spawn("api-server", [str(BIN / "airflow"), "api-server", "--workers", "1"], env=env)
        for component in ("scheduler", "dag-processor"):
            self.spawn(component, [str(BIN / "airflow"), component], env=env)
        wait_for("Airflow api-server", lambda: http_ok(f"{self.api_url}/api/v2/monitor/health"), api,
                 self.logs["api-server"], 180)
        wait_for("Airflow scheduler and dag-processor", self.airflow_healthy, self.procs["scheduler"],
                 self.logs["scheduler"], 180)

    def airflow_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=3) as response:  # noqa: S310
            health = json.load(response)
        return all(health.get(part, {}).get("status") == "healthy" for part in ("scheduler", "dag_processor"))

    def start_worker(self, name: str) -> None:
        """One Celery worker: its own AIRFLOW_HOME and empty MMR_HOME; TI hostnames are its name."""
        home = self.root / "workers" / name
        (home / "mmr_home").mkdir(parents=True)
        (home / "airflow" / "config").mkdir(parents=True)
        (home / "airflow" / "config" / "mmr_cluster_host.py").write_text(
            f"def hostname() -> str:\n    return {name!r}\n")  # two workers share this machine's real hostname
        env = self.airflow_env(home / "airflow") | self.worker_env(home / "mmr_home") | {
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "mmr_cluster_host.hostname",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports[f"{name}-logs"])}
        proc = self.spawn(name, [str(BIN / "airflow"), "celery", "worker", "--celery-hostname", f"{name}@%h",
                                 "--queues", "default", "--concurrency", "1"], env=env, cwd=home)
        wait_for(f"Celery worker {name}", lambda: self.worker_answers(name), proc, self.logs[name], 180)

    def worker_answers(self, name: str) -> bool:
        from celery import Celery

        app = Celery(broker=self.redis_url)
        try:
            return any(k.startswith(f"{name}@") for reply in app.control.ping(timeout=1.0) for k in reply)
        finally:
            app.close()

    # -- addresses and environments ---------------------------------------------------------------------------------
    @property
    def pg_url(self) -> str:
        return f"postgresql://mmr@{HOST}:{self.ports['postgres']}"

    def sqlalchemy_url(self, db: str) -> str:
        return f"postgresql+psycopg2://mmr@{HOST}:{self.ports['postgres']}/{db}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.ports['redis']}/0"

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.ports['api']}"

    def store_env(self) -> dict[str, str]:
        """What a process needs to use the stores: Milvus, MLflow, the bucket (data and DVC remote)."""
        env = {**S3_KEYS, "MMR_DATA_URL": f"s3://{BUCKET}/data", "MMR_LOCK_URL": f"{self.pg_url}/mmr",
               "AWS_ENDPOINT_URL": self.s3_url, "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
               "MMR_MLFLOW_TRACKING_URI": self.mlflow_url}
        if self.milvus:
            env["MMR_MILVUS_URI"] = f"http://{HOST}:{self.ports['milvus']}"
        if self.params:
            env["MMR_PARAMS"] = str(self.params)
        return env

    def worker_env(self, mmr_home: Path) -> dict[str, str]:
        conns = {"AIRFLOW_CONN_MLFLOW_DEFAULT": self.mlflow_url, "AIRFLOW_CONN_MMR_DATA_DEFAULT": json.dumps({
            "conn_type": "aws", "login": S3_KEYS["AWS_ACCESS_KEY_ID"], "password": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            "extra": {"endpoint_url": self.s3_url, "data_url": f"s3://{BUCKET}/data", "region_name": "us-east-1"}})}
        if self.milvus:
            conns["AIRFLOW_CONN_MILVUS_DEFAULT"] = f"http://{HOST}:{self.ports['milvus']}"
        return self.store_env() | conns | {"MMR_HOME": str(mmr_home)}

    def airflow_env(self, home: Path) -> dict[str, str]:
        return {
            "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sqlalchemy_url("airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": _async_url(self.sqlalchemy_url("airflow")),
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.sqlalchemy_url("airflow"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1", "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__HOST": HOST, "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API_AUTH__JWT_SECRET": self.secret, "AIRFLOW__API__SECRET_KEY": self.secret,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # loopback only: no login page
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",  # the DAG files do not change
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",  # a dead worker's task: retried after ~30 s
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }

    def client_env(self) -> dict[str, str]:
        """For ``mmr`` and ``airflow`` commands on this machine (the scheduler's Airflow home, no MMR_HOME)."""
        return self.store_env() | self.airflow_env(self.root / "airflow")

    # -- start-up ---------------------------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Every server, independent ones in parallel; returns (and writes) ``cluster.json``."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)  # the postgres user must reach its own folder
        first = [("postgres", self.start_postgres), ("redis", self.start_redis), ("s3", self.start_s3)]
        if self.milvus:
            first.append(("milvus", self.start_milvus))
        self.parallel(first)
        self.parallel([("mlflow", self.start_mlflow), ("airflow", self.start_airflow)])
        self.parallel([(name, lambda n=name: self.start_worker(n)) for name in WORKERS])
        return self.write_info()

    def parallel(self, steps: list[tuple[str, Callable[[], None]]]) -> None:
        with ThreadPoolExecutor(len(steps)) as pool:
            futures = [pool.submit(self.timed, name, step) for name, step in steps]
            for future in futures:
                future.result()

    def write_info(self) -> dict[str, Any]:
        info = {"root": str(self.root), "ports": self.ports, "env": self.client_env(), "timings": self.timings,
                "urls": {"postgres": self.pg_url, "redis": self.redis_url, "s3": self.s3_url,
                         "mlflow": self.mlflow_url, "api": self.api_url, "bucket": f"s3://{BUCKET}"},
                "pids": {name: proc.pid for name, proc in self.procs.items()},
                "workers": {w: {"mmr_home": str(self.root / "workers" / w / "mmr_home"),
                                "airflow_home": str(self.root / "workers" / w / "airflow")} for w in WORKERS},
                "logs": {name: str(log) for name, log in self.logs.items()}}
        (self.root / "cluster.json").write_text(json.dumps(info, indent=2))
        (self.root / "cluster.env").write_text("".join(f"export {k}={_quote(v)}\n" for k, v in info["env"].items()))
        return info


def _async_url(url: str) -> str:
    """Airflow's async metadata engine needs asyncpg; without it, none (the execution API and the CLI need none)."""
    import importlib.util

    return url.replace("+psycopg2", "+asyncpg", 1) if importlib.util.find_spec("asyncpg") else ""


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="folder for everything (default: a new temporary folder, removed "
                                                  "at the end)")
    parser.add_argument("--params", type=Path, help="params.yaml the workers use (default: the repository's)")
    parser.add_argument("--no-milvus", action="store_true", help="do not start the Milvus server")
    parser.add_argument("--stop-timeout", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.root is None
    root = Path(tempfile.mkdtemp(prefix="mmr-cluster-")) if temporary else args.root
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, args.params or REPO / "params.yaml", milvus=not args.no_milvus,
                      stop_timeout=args.stop_timeout)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        began = time.monotonic()
        cluster.start()
        print(f"READY {root / 'cluster.json'} (started in {time.monotonic() - began:.0f} s: {cluster.timings})",
              flush=True)
        print(f"  use it from a shell: source {root / 'cluster.env'}", flush=True)
        reported: set[str] = set()
        while not stopping:  # a dead server is reported, not restarted: tests kill workers on purpose
            for name in sorted(n for n, proc in cluster.procs.items() if proc.poll() is not None and n not in reported):
                print(f"{name} exited ({cluster.procs[name].returncode}); log {cluster.logs[name]}", flush=True)
                reported.add(name)
            time.sleep(1)
    except StartError as e:
        print(f"cluster: {e}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop()
        if temporary and code == 0:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
