"""docker-compose.yml read as the tests need it: its services, their commands as words, and the workspace mounts."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from tests.helpers.workspace import REPO

COMPOSE = REPO / "docker-compose.yml"


def compose() -> dict[str, Any]:
    """The repository's docker-compose.yml, parsed."""
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services() -> dict[str, dict[str, Any]]:
    """Service name -> its definition."""
    return compose()["services"]


def command_words(service: dict[str, Any]) -> list[str]:
    """A service's command as words (a string is split like a shell; ``bash -c "..."`` is opened up)."""
    cmd = service.get("command", [])
    words = shlex.split(cmd) if isinstance(cmd, str) else [str(w) for w in cmd]
    if words[:2] == ["bash", "-c"] or words[:2] == ["sh", "-c"]:
        words = shlex.split(" ".join(words[2:]))
    return words


def mlflow_server_args() -> list[str]:
    """The arguments after ``mlflow server`` in the mlflow service's command."""
    words = command_words(services()["mlflow"])
    start = next(i for i in range(len(words) - 1) if words[i:i + 2] == ["mlflow", "server"])
    return words[start + 2:]


def option(args: list[str], name: str) -> str | None:
    """The value of option ``name`` in ``args`` (``--name value`` or ``--name=value``); None when absent."""
    for i, w in enumerate(args):
        if w == name and i + 1 < len(args):
            return args[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def workspace_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts under MMR_HOME: container path relative to MMR_HOME -> host source."""
    home = service["environment"]["MMR_HOME"].rstrip("/")
    out = {}
    for spec in service.get("volumes", []):
        source, target = str(spec).split(":")[:2]
        if target == home or target.startswith(home + "/"):
            out[target.removeprefix(home).lstrip("/") or "."] = source
    return out


def covered(mounts: dict[str, str], rel: str) -> bool:
    """Whether ``rel`` (relative to MMR_HOME) lies in one of :func:`workspace_mounts`' mounts."""
    return any(m == "." or rel == m or rel.startswith(m + "/") for m in mounts)
