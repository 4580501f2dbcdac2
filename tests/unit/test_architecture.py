"""The architecture as checks that can fail: the import-linter contracts of pyproject.toml hold, each of them is shown
to catch the import it forbids (in a temporary copy of the package), none of them can be deleted unnoticed, and no
function of the library is longer than 80 lines."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers.workspace import BIN, REPO

PACKAGE = REPO / "mmretrieval"
CONTRACT_IDS = ["layers", "stages-independent", "backend-doors", "no-airflow", "light-lower-layers"]
MAX_FUNCTION_LINES = 80

# One forbidden import per rule: (new module in the copy, its source, the contract it breaks, the import reported).
# New modules, so that the cases hold whichever existing module is split or moved.
FORBIDDEN = [
    ("serving/forbidden.py", "from mmretrieval.stages import train\n", "layers",
     "mmretrieval.serving.forbidden -> mmretrieval.stages.train"),
    ("training/forbidden.py", "from mmretrieval.stages import evaluate\n", "layers",
     "mmretrieval.training.forbidden -> mmretrieval.stages.evaluate"),
    ("backends/forbidden.py", "from mmretrieval.models import dual_encoder\n", "layers",
     "mmretrieval.backends.forbidden -> mmretrieval.models.dual_encoder"),
    ("core/forbidden.py", "from mmretrieval.models import losses\n", "layers",
     "mmretrieval.core.forbidden -> mmretrieval.models.losses"),
    ("media/forbidden.py", "from mmretrieval.models import audio\n", "layers",
     "mmretrieval.media.forbidden -> mmretrieval.models.audio"),
    ("stages/forbidden.py", "from mmretrieval.stages import train\n", "stages-independent",
     "mmretrieval.stages.forbidden -> mmretrieval.stages.train"),
    ("core/forbidden.py", "import mlflow\n", "backend-doors", "mmretrieval.core.forbidden -> mlflow"),
    ("serving/forbidden.py", "import pymilvus\n", "backend-doors", "mmretrieval.serving.forbidden -> pymilvus"),
    ("stages/forbidden.py", "import dvc.repo\n", "backend-doors", "mmretrieval.stages.forbidden -> dvc"),
    ("stages/forbidden.py", "import s3fs\n", "backend-doors", "mmretrieval.stages.forbidden -> s3fs"),
    ("core/forbidden.py", "import psycopg2\n", "backend-doors", "mmretrieval.core.forbidden -> psycopg2"),
    ("media/forbidden.py", "import airflow\n", "no-airflow", "mmretrieval.media.forbidden -> airflow"),
    ("media/forbidden.py", "import torch\n", "light-lower-layers", "mmretrieval.media.forbidden -> torch"),
]


def contracts(pyproject: Path = REPO / "pyproject.toml") -> list[dict[str, object]]:
    """The ``[[tool.importlinter.contracts]]`` tables of ``pyproject``, in order."""
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]


def only_python(folder: str, names: list[str]) -> list[str]:
    """What :func:`shutil.copytree` leaves out of the package's copy: everything but Python sources and folders."""
    return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or Path(folder, n).is_dir())]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the ``mmretrieval`` package and pyproject.toml under ``root`` (that copy first on the path,
    not the installed one); one line per contract (wide columns), no cache written."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "1000"}
    command = [str(BIN / "lint-imports"), "--no-cache", "--no-logo", "--config", str(root / "pyproject.toml")]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def broken_contracts(output: str) -> set[str]:
    """Names of the contracts the summary reports BROKEN (a line may go on: ``BROKEN (1 ignored import)``)."""
    return {line.split(" BROKEN")[0] for line in output.splitlines() if " BROKEN" in line}


def test_the_import_contracts_hold() -> None:
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"Contracts: {len(CONTRACT_IDS)} kept, 0 broken." in out.stdout


def test_the_contracts_are_the_declared_ones() -> None:
    """A contract deleted or renamed in pyproject.toml fails here (and the cases below are its proof of work)."""
    assert [c["id"] for c in contracts()] == CONTRACT_IDS


@pytest.mark.parametrize(("module", "source", "contract", "reported"), FORBIDDEN,
                         ids=[f"{c}: {r}" for _, _, c, r in FORBIDDEN])
def test_a_forbidden_import_breaks_its_contract(module: str, source: str, contract: str, reported: str,
                                                tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "mmretrieval", ignore=only_python)
    shutil.copyfile(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "mmretrieval" / module).write_text(source, encoding="utf-8")
    out = lint_imports(tmp_path)
    name = next(c["name"] for c in contracts() if c["id"] == contract)
    assert out.returncode != 0, out.stdout[-4000:]
    assert broken_contracts(out.stdout) == {name}, out.stdout[-4000:]
    assert reported in out.stdout, out.stdout[-4000:]


def long_functions(package: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function or method (nested ones too) longer than ``limit`` lines,
    counted from its ``def`` to its last line."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_library_function_is_longer_than_80_lines() -> None:
    offenders = long_functions()
    assert offenders == [], "longer than 80 lines:\n" + "\n".join(offenders)
