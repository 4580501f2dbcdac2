"""``mmr --help`` starts fast: building the parser imports no heavy library (issue 23, point 8). The commands that
touch a published dataset are checked the same way in tests/integration/test_cli_imports.py."""

import json
import os
from pathlib import Path

import pytest

from tests.helpers.processes import imported, modules_after

HEAVY = ("torch", "torchvision", "sentence_transformers", "transformers", "airflow", "great_expectations", "mlflow",
         "pymilvus", "pandas")


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["info", "--help"]])
def test_help_imports_no_heavy_library(argv: list[str]) -> None:
    after = modules_after(argv)
    assert after["rc"] == 0
    assert after["stdout"].startswith("usage: mmr")
    assert imported(after["modules"], HEAVY) == []


def test_cache_info_imports_no_heavy_library(tmp_path: Path) -> None:
    """``mmr cache info`` (and prune: the same module) reads folders and stats files, nothing more."""
    after = modules_after(["cache", "info", "--json"], cwd=tmp_path, env={**os.environ, "MMR_HOME": str(tmp_path)})
    assert after["rc"] == 0 and json.loads(after["stdout"])["total"]["entries"] == 0
    assert imported(after["modules"], HEAVY) == []
