"""Load test of ``mmr serve`` on loopback: bounded, one machine, nothing leaves 127.0.0.1.

    MMR_HOME=<workspace with a published dataset> .venv/bin/python bench/service_load.py --dataset demo

Starts ``mmr serve`` (a subprocess, an API key set) on a free loopback port, waits for /health/ready, then runs
three phases, each ``--seconds`` long (default 20; ``--clients`` threads, default 8, each on its own keep-alive
connection), while one more thread asks ``/health/live`` every 50 ms:

* search: text queries (the dataset's captions) to ``POST /search``;
* upload: the dataset's clean images to ``POST /search/upload``;
* hostile: the hostile inputs of ``tests/integration/test_service.py`` once each, one at a time, with the server's
  resident memory read from ``/proc`` before and after each.

Prints JSON: QPS and p50/p95/p99/max latency per phase, errors by status, /health/live latency under each phase,
and per hostile input its status, latency and the server's memory growth. Whole run: about 3 x seconds + start-up.

``--soak SECONDS`` runs a soak instead (bench/service_soak.py): slow, large and normal clients mixed against one
server for that long; ``--build-tiny`` first publishes the tests' tiny dataset in a temporary workspace (about a
minute), so that no prepared workspace is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

KEY = "bench-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[1]


def pct(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    a = np.array(samples) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in (50, 95, 99)} | {
        "max_ms": round(float(a.max()), 1)}


def phase(url: str, clients: int, seconds: float, make: Callable[[int, int], dict[str, Any]],
          path: str) -> dict[str, Any]:
    """``clients`` threads send ``make(client, i)`` requests to ``path`` for ``seconds``; health is probed too."""
    stop = threading.Event()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    health: list[float] = []
    health_at: list[float] = []  # seconds into the phase when each probe was sent
    lock = threading.Lock()

    def worker(c: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as http:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                r = http.post(path, **make(c, i))
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    statuses[r.status_code] += 1
                i += 1

    def prober() -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not stop.is_set():
                t = time.perf_counter()
                http.get("/health/live")
                health.append(time.perf_counter() - t)
                health_at.append(t - started)
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)] + [threading.Thread(target=prober)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "qps": round(len(latencies) / elapsed, 1), **pct(latencies),
            "statuses": dict(statuses), "health_live": {"probes": len(health), **pct(health),
                                                        "slowest_at_s": round(health_at[int(np.argmax(health))], 2)
                                                        if health else None}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="per phase (bounded: at most 60)")
    ap.add_argument("--soak", type=float, default=0.0, help="run the mixed soak for this many seconds (at most 600)")
    ap.add_argument("--build-tiny", action="store_true", help="publish the tests' tiny dataset in a temporary "
                                                              "workspace first and serve it (--dataset tiny)")
    args = ap.parse_args()
    seconds = min(args.seconds, 60.0)
    sys.path.insert(0, str(REPO))
    from bench.served import rss_mb, start, wait_ready

    if args.soak:
        from bench.service_soak import soak

        print(json.dumps(soak(min(args.soak, 600.0), args.dataset, args.build_tiny), indent=1))
        return

    import pandas as pd

    from mmretrieval.core.settings import get_settings

    s = get_settings()
    clean_dir = s.layout(args.dataset).clean
    clean = pd.read_parquet(clean_dir / "manifest.parquet")
    texts = [t.split(" ||| ")[0] for t in clean["text"] if t] or ["a photo"]
    images = [(clean_dir / m).read_bytes() for m in clean[clean["modality"] == "image"]["media"]][:64]

    url, server = start(args.dataset, {**os.environ, "MMR_API_KEYS": KEY})
    try:
        ready = wait_ready(url, server)
        result: dict[str, Any] = {"dataset": args.dataset, "items": len(clean), "clients": args.clients,
                                  "seconds_per_phase": seconds, "start_to_ready_s": ready,
                                  "cpus": os.cpu_count()}
        result["search"] = phase(url, args.clients, seconds,
                                 lambda c, i: {"json": {"text": texts[(c * 7919 + i) % len(texts)], "k": 10}},
                                 "/search")
        result["upload"] = phase(url, args.clients, seconds, lambda c, i: {
            "files": {"file": ("q.png", images[(c * 31 + i) % len(images)], "image/png")}, "data": {"k": "10"}},
            "/search/upload")
        from tests.integration.test_service import hostile_inputs

        hostile = {}
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as http:
            for name, path, kwargs, _ in hostile_inputs():
                if "content" in kwargs:
                    kwargs = {**kwargs, "headers": {"content-type": "application/json"}}
                before = rss_mb(server.pid)
                t = time.perf_counter()
                try:
                    status: int | str = http.post(path, **kwargs).status_code
                except httpx.TransportError as e:  # the server closed the connection before all was sent
                    status = f"closed: {type(e).__name__}"
                dt = time.perf_counter() - t
                hostile[name] = {"status": status, "ms": round(dt * 1000, 1),
                                 "rss_growth_mb": round(rss_mb(server.pid) - before, 1)}
        result["hostile"] = hostile
        result["hostile_summary"] = {
            "all_4xx": all(isinstance(h["status"], int) and 400 <= h["status"] < 500 for h in hostile.values()),
            "max_ms": max(h["ms"] for h in hostile.values()),
            "max_rss_growth_mb": max(h["rss_growth_mb"] for h in hostile.values())}
        result["server_rss_mb_end"] = round(rss_mb(server.pid), 1)
        print(json.dumps(result, indent=1))
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
