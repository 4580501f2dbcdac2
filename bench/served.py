"""A live ``mmr serve`` for the service benchmarks (service_load.py, service_soak.py): start it on a free loopback
port, wait until ``/health/ready`` answers, read its resident memory."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def start(dataset: str, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    """``mmr serve --dataset dataset`` on a free 127.0.0.1 port with ``env`` (output discarded): (url, process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "mmr"), "serve", "--dataset", dataset, "--host",
                               "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return f"http://127.0.0.1:{port}", server


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 300) -> float:
    """Poll ``url``/health/ready until it answers 200; the seconds it took. AssertionError when the server exits or
    ``timeout`` seconds pass."""
    import httpx

    t0 = time.perf_counter()
    while True:
        assert server.poll() is None, "the server exited (run `mmr serve` by hand to see why)"
        assert time.perf_counter() - t0 < timeout, f"the server was not ready within {timeout:g} s"
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return round(time.perf_counter() - t0, 1)
        except httpx.TransportError:
            pass
        time.sleep(0.3)


def rss_mb(pid: int) -> float:
    """The process's resident memory in MiB (from /proc); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0
