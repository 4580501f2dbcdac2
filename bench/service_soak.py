"""The service soak: slow, large and normal clients mixed against one live ``mmr serve`` (run through
``bench/service_load.py --soak SECONDS``).

For ``seconds``, against a server with API keys and its default limits except ``MMR_HEADER_TIMEOUT=5``,
``MMR_BODY_TIMEOUT=10`` (so that slow clients are cut off several times each):

* normal: 4 threads, text searches (``POST /search``) back to back, latency of each recorded;
* large: 2 threads uploading 6000x6000 RGBA PNGs (inside the 40-megapixel limit, ~0.3 MB each) back to back;
* slow: 4 threads dribbling request headers and 4 dribbling a JSON body, one byte every 0.5 s, reconnecting each time
  the server cuts them off;
* the server's RSS sampled every 0.2 s from /proc.

Returns request counts by client kind and status, p50/p99 of the normal clients, how long slow connections lasted,
peak and final (idle) RSS, and whether any request got a 5xx.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.served import rss_mb, start, wait_ready

KEY = "soak-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


def large_png(seed: int, side: int = 6000) -> bytes:
    from PIL import Image

    row = np.random.default_rng(seed).integers(0, 255, (1, side, 4), dtype=np.uint8)
    row[..., 3] = 200
    pixels = np.repeat(row, side, axis=0)
    pixels[: side // 2, :, :3] //= 2
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, "PNG")
    return out.getvalue()


def tiny_workspace() -> Path:
    """The tests' tiny dataset taken through every stage to publish in a temporary workspace (MMR_HOME)."""
    sys.path.insert(0, str(REPO))
    from tests.helpers.files import tiny_dataset
    from tests.helpers.workspace import make_workspace

    root = make_workspace(Path(tempfile.mkdtemp(prefix="mmr-soak-")) / "ws")
    env = {**os.environ, "MMR_HOME": str(root)}
    mmr = str(Path(sys.executable).parent / "mmr")
    subprocess.run([mmr, "ingest", str(tiny_dataset(root.parent / "src")), "--name", "tiny"], env=env, check=True,
                   cwd=root, capture_output=True)
    subprocess.run([mmr, "run", "--dataset", "tiny"], env=env, check=True, cwd=root, capture_output=True)
    return root


def dribbler(url: str, head: bytes, trickle: bytes, stop: threading.Event, out: dict[str, list[Any]]) -> None:
    host, port = url.removeprefix("http://").split(":")
    while not stop.is_set():
        started = time.monotonic()
        answer = b""
        try:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(head)
                sock.settimeout(0.5)
                i = 0
                while not stop.is_set():
                    try:
                        sock.sendall(trickle[i % len(trickle):i % len(trickle) + 1])
                        i += 1
                        data = sock.recv(4096)
                        if not data:
                            break
                        answer += data
                    except TimeoutError:
                        continue
        except OSError:
            pass
        if stop.is_set():
            return
        status = answer[9:12].decode(errors="replace") if answer.startswith(b"HTTP/1.1 ") else "closed"
        out["slow"].append((status, time.monotonic() - started))


def soak(seconds: float, dataset: str, build_tiny: bool) -> dict[str, Any]:
    """Run the soak (see the module docstring) and return its numbers."""
    home = tiny_workspace() if build_tiny else None
    dataset = "tiny" if build_tiny else dataset
    env = {**os.environ, "MMR_API_KEYS": KEY, "MMR_HEADER_TIMEOUT": "5", "MMR_BODY_TIMEOUT": "10",
           **({"MMR_HOME": str(home)} if home else {})}
    url, server = start(dataset, env)
    try:
        ready = wait_ready(url, server)
        return {"dataset": dataset, "seconds": seconds, "cpus": os.cpu_count(), "start_to_ready_s": ready,
                **mixed(url, server.pid, seconds)}
    finally:
        server.terminate()
        server.wait(30)


def mixed(url: str, pid: int, seconds: float) -> dict[str, Any]:
    """The clients of the soak against ``url`` (server process ``pid``) for ``seconds``."""
    images = [large_png(seed) for seed in range(4)]
    stop = threading.Event()
    out: dict[str, list[Any]] = {"normal": [], "large": [], "slow": [], "rss": []}
    baseline = rss_mb(pid)

    def client(kind: str, c: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as http:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                if kind == "normal":
                    r = http.post("/search", json={"text": f"a square number {c * 1000 + i}", "k": 10})
                else:
                    r = http.post("/search/upload", files={"file": ("big.png", images[(c + i) % 4], "image/png")},
                                  data={"k": "5"})
                out[kind].append((r.status_code, time.perf_counter() - t))
                i += 1

    def sampler() -> None:
        while not stop.is_set():
            out["rss"].append(rss_mb(pid))
            time.sleep(0.2)

    head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 4000\r\n\r\n").encode()
    threads = ([threading.Thread(target=client, args=("normal", c)) for c in range(4)]
               + [threading.Thread(target=client, args=("large", c)) for c in range(2)]
               + [threading.Thread(target=dribbler, args=(url, head, b"X-Slow: aaaa\r\n", stop, out)) for _ in range(4)]
               + [threading.Thread(target=dribbler, args=(url, body, b'{"text": "x"}', stop, out)) for _ in range(4)]
               + [threading.Thread(target=sampler)])
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    time.sleep(3)
    normal = np.array([dt for status, dt in out["normal"] if status == 200]) * 1000
    statuses = {kind: dict(Counter(str(s) for s, _ in out[kind])) for kind in ("normal", "large", "slow")}
    return {"requests_by_status": statuses,
            "normal_p50_ms": round(float(np.percentile(normal, 50)), 1) if normal.size else None,
            "normal_p99_ms": round(float(np.percentile(normal, 99)), 1) if normal.size else None,
            "large_p50_s": round(float(np.median([dt for _, dt in out["large"]])), 2) if out["large"] else None,
            "slow_connection_lifetime_s": {"max": round(max((dt for _, dt in out["slow"]), default=0.0), 1),
                                           "median": round(float(np.median([dt for _, dt in out["slow"]])), 1)
                                           if out["slow"] else None},
            "rss_mb": {"before": round(baseline), "peak": round(max(out["rss"], default=baseline)),
                       "final_idle": round(rss_mb(pid))},
            "any_5xx": any(str(s).startswith("5") for kind in ("normal", "large", "slow") for s, _ in out[kind])}
