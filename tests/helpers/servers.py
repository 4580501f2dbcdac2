"""Servers the integration tests start on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
              timeout: float = 240) -> Iterator[Served]:
    """``mmr serve --dataset dataset`` (the installed CLI, this environment plus ``env``, ``MMR_HOME=home``) on a
    free loopback port, its stdout and stderr in ``log``, once ``/health/ready`` answers 200; stopped after."""
    import httpx

    port = free_port()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mmr"), "serve", "--dataset", dataset, "--port",
                                 str(port)], env={**os.environ, "MMR_HOME": str(home), **(env or {})},
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
