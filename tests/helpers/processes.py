"""Running the CLI in a fresh interpreter and reading what it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def modules_after(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``mmretrieval.cli.main(argv)`` in a fresh interpreter (environment ``env``, default this one's) and
    return its exit status (a ``SystemExit``'s included), what it printed and ``sys.modules`` after it:
    ``{"rc": int, "stdout": str, "stderr": str, "modules": set[str]}``."""
    code = ("import json, sys\nfrom mmretrieval.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "except SystemExit as e:\n    rc = e.code\nprint(json.dumps([rc, sorted(sys.modules)]))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=os.environ if env is None else env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *printed, last = proc.stdout.splitlines()
    rc, modules = json.loads(last)
    return {"rc": rc, "stdout": "\n".join(printed), "stderr": proc.stderr, "modules": set(modules)}


def imported(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    """The names of ``packages`` of which ``modules`` holds the package itself or any submodule."""
    return [p for p in packages if any(m == p or m.startswith(p + ".") for m in modules)]


def stop_groups(procs: list[subprocess.Popen[Any]], timeout: float) -> None:
    """Stop processes started with ``start_new_session=True``, each with its process group (its workers and task
    processes): SIGTERM to every group still running, then wait ``timeout`` seconds for each before SIGKILL."""
    import signal

    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
