"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.runner import run_stage
from mmretrieval.stages.ingest import ingest
from tests.integration.test_training import tiny_dataset


@pytest.fixture
def prepared(workspace: Path) -> Path:
    """The tiny dataset ingested, validated, cleaned and augmented in a fresh workspace."""
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    for verb in ("validate", "clean", "augment"):
        run_stage(verb, "tiny")
    return workspace


@pytest.fixture(scope="session")
def published_tiny(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny dataset taken through every stage up to publish, once per session (about 30 s on 2 CPU cores).

    Tests use the returned settings explicitly; MMR_HOME is set only while it is built.
    """
    from mmretrieval.runner import run_all
    from tests.conftest import make_workspace

    root = make_workspace(tmp_path_factory.mktemp("published") / "ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMR_HOME", str(root))
        for var in ("MMR_PARAMS", "MMR_MILVUS_URI", "MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI",
                    "MMR_MLFLOW_ARTIFACTS", "MMR_DATASET", "MMR_API_KEYS", "MMR_API_KEYS_FILE"):
            mp.delenv(var, raising=False)
        mp.chdir(root)
        ingest(tiny_dataset(root.parent / "src"), "tiny")
        run_all("tiny")
        return get_settings(root)
