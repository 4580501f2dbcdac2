"""Shared fixtures: an isolated workspace (MMR_HOME) with its own DVC repo, MLflow SQLite and Milvus Lite file.

Helpers that are plain functions (writing files, running the CLI, ...) are in :mod:`tests.helpers`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.workspace import enter_workspace, make_workspace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# MLflow's telemetry thread, offline, gives up at a random moment and deletes _MLFLOW_TELEMETRY_SESSION_ID from
# os.environ: a race with the tests that check the library leaves the environment as it found it
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MMR_HOME (DVC repo without git) whose stores all live inside it; also the working folder."""
    return enter_workspace(monkeypatch, make_workspace(tmp_path / "ws"))
