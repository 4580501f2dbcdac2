"""Servers the integration tests start on loopback."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it), for a server a test starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """A running ``mmr serve`` process: its address, process id and the file its output (the log) goes to."""

    url: str
    pid: int
    log: Path

    def rss_mb(self) -> float:
        """The server process's resident memory (MiB, from /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS for process {self.pid}")

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def mmr_serve(home: Path, dataset: str, log: Path, env: dict[str, str] | None = None,
              timeout: float = 240, environ: dict[str, str] | None = None) -> Iterator[Served]:
    """``mmr serve --dataset dataset`` (the installed CLI, ``environ`` (default: this environment) plus ``env``,
    ``MMR_HOME=home``) on a free loopback port, its stdout and stderr in ``log``, once ``/health/ready`` answers
    200; stopped after."""
    import httpx

    port = free_port()
    base = os.environ if environ is None else environ
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mmr"), "serve", "--dataset", dataset, "--port",
                                 str(port)], env={**base, "MMR_HOME": str(home), **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield Served(url, proc.pid, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
# --- servers of the scale-out tests: an S3 store, Postgres, Redis (context managers yielding URLs) -----------------
# Each starts on a free loopback port under a temporary folder and is stopped (and its folder removed) on exit.
PG_BIN = Path("/usr/lib/postgresql/15/bin")
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _wait_for(ready: Callable[[], bool], proc: subprocess.Popen[bytes] | None, what: str, log: Path,
              timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout_s:.0f}s: {log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def s3_server(bucket: str = "mmr") -> Iterator[str]:
    """An S3-compatible server (moto's ``moto_server``, from PyPI) on 127.0.0.1 with ``bucket`` created. Yields its
    endpoint URL (``http://127.0.0.1:<port>``); credentials: :data:`S3_CREDENTIALS` (any values are accepted).
    Use it with ``AWS_ENDPOINT_URL=<url>`` and ``MMR_DATA_URL=s3://<bucket>/<prefix>``."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mmr-s3-") as tmp:
        log = Path(tmp) / "moto.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                     str(port)], stdout=out, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                            **S3_CREDENTIALS})
        try:
            _wait_for(lambda: urllib.request.urlopen(f"{url}/moto-api/", timeout=2).status == 200, proc,
                      "moto_server", log)
            request = urllib.request.Request(f"{url}/{bucket}", method="PUT")  # CreateBucket, unsigned: moto allows
            urllib.request.urlopen(request, timeout=10).close()
            yield url
        finally:
            _stop(proc)


def _as_postgres_user() -> list[str]:
    """The command prefix that runs Postgres' tools as a non-root user (Postgres refuses root): none unless root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "nobody", "--"]


@contextlib.contextmanager
def postgres_server(database: str = "mmr") -> Iterator[str]:
    """A PostgreSQL 15 server (Debian's ``postgresql-15``: initdb + pg_ctl) on 127.0.0.1 in a temporary folder,
    trust authentication, fsync off, with ``database`` created. Yields ``postgresql://postgres@127.0.0.1:<port>/
    <database>``. Run as root, its files belong to ``nobody`` and its tools run through ``runuser``."""
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="mmr-pg-", dir="/tmp"))
    data, log = root / "data", root / "postgres.log"
    as_user = _as_postgres_user()
    try:
        if as_user:
            shutil.chown(root, "nobody", "nogroup")
        root.chmod(0o755)
        run = functools.partial(subprocess.run, check=True, capture_output=True, cwd=root)
        run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"])
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60",
             "start"])
        try:
            run([*as_user, str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                 f"CREATE DATABASE {database}"])
            yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, cwd=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis server (Debian's ``redis-server``) on 127.0.0.1, no persistence. Yields ``redis://127.0.0.1:<port>/0``."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mmr-redis-") as tmp:
        log = Path(tmp) / "redis.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", tmp], stdout=out, stderr=subprocess.STDOUT)

        def pong() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        try:
            _wait_for(pong, proc, "redis-server", log)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(proc)
