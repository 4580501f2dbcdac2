"""Run a real Milvus standalone server (PyPI ``milvus==2.3.5``) until SIGTERM or SIGINT.

Runs with the interpreter of its own virtualenv, ``.venv-milvus/bin/python`` (``make milvus-server-venv``): the
``milvus`` package pins an old pymilvus, so it never shares the project's ``.venv``. Usage::

    .venv-milvus/bin/python scripts/milvus_server.py --base-dir /tmp/milvus --port 19530

Prints ``READY http://127.0.0.1:<port>`` on stdout once the server answers, then waits; on SIGTERM/SIGINT it stops
the server and exits 0: SIGTERM to Milvus, then SIGKILL after ``--stop-timeout`` seconds. Milvus 2.3.5 standalone
never finishes its graceful stop once a collection was loaded (it stops the coordinators first; the nodes then retry
them forever, whatever ``common.gracefulStopTimeout`` says), so that SIGKILL is the usual end; flushed data survives
it (the next start recovers from its write-ahead log). Data, configuration and logs live under ``--base-dir``
(``logs/milvus-stdout.log`` on a failed start). Exit status 1 when the server does not start or dies.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dir", type=Path, required=True, help="data, configuration and logs of the server")
    parser.add_argument("--port", type=int, default=19530, help="gRPC/HTTP port of the proxy (default 19530)")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for readiness")
    parser.add_argument("--stop-timeout", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    return parser.parse_args(argv)


def configure(base_dir: Path, port: int) -> Any:
    """The package's ``default_server`` with its data under ``base_dir`` and its proxy on exactly ``port``."""
    from milvus import default_server

    default_server.set_base_dir(str(base_dir.resolve()))
    # `config.update` (not the `listen_port` setter) makes a busy port an error instead of a silent next free port
    default_server.config.update(proxy_port=port)
    default_server.wait_for_started = False  # its own wait keeps polling after the process died
    return default_server


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((HOST, port)) == 0


def healthy(metrics_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/healthz", timeout=2) as resp:
            return "OK" in resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_ready(server: Any, port: int, timeout: float, stopping: threading.Event) -> None:
    """Return once /healthz says OK and the proxy port accepts connections; raise if the process died, a signal
    came or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopping.is_set():
            raise InterruptedError("stopped by a signal while starting")
        code = server.server_proc.poll()
        if code is not None:
            raise RuntimeError(f"milvus exited with status {code} while starting; see {log_hint(server)}")
        if healthy(server.webservice_port) and port_open(port):
            return
        time.sleep(0.5)
    raise TimeoutError(f"milvus did not become ready on port {port} within {timeout:.0f} s; see {log_hint(server)}")


def log_hint(server: Any) -> str:
    return str(Path(server.config.base_data_dir) / "logs" / "milvus-stdout.log")


def stop(server: Any, timeout: float) -> str:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL (the package's own stop waits only one second).

    Returns how it ended, for the log line."""
    proc = server.server_proc
    how = "not running"
    if proc is not None and proc.poll() is None:
        started = time.monotonic()
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
            how = f"stopped in {time.monotonic() - started:.1f} s"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            how = f"killed after {timeout:.0f} s"
    server.stop()  # closes the log files
    return how


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    args.base_dir.mkdir(parents=True, exist_ok=True)
    server = configure(args.base_dir, args.port)
    started = time.monotonic()
    try:
        server.start()
        wait_ready(server, args.port, args.start_timeout, stopping)
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"milvus_server: error: {e}", file=sys.stderr, flush=True)
        stop(server, args.stop_timeout)
        return 1
    print(f"READY http://{HOST}:{args.port} after {time.monotonic() - started:.1f} s "
          f"(pid {server.server_proc.pid}, data {server.config.base_data_dir})", flush=True)
    while not stopping.wait(1.0):
        if server.server_proc.poll() is not None:
            print(f"milvus_server: error: milvus exited with status {server.server_proc.returncode}; "
                  f"see {log_hint(server)}", file=sys.stderr, flush=True)
            server.stop()
            return 1
    print(f"STOPPED ({stop(server, args.stop_timeout)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
