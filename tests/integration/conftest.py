"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmretrieval.datasets import ingest
from mmretrieval.stages import run_stage
from tests.integration.test_training import tiny_dataset


@pytest.fixture
def prepared(workspace: Path) -> Path:
    """The tiny dataset ingested, validated, cleaned and augmented in a fresh workspace."""
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    for verb in ("validate", "clean", "augment"):
        run_stage(verb, "tiny")
    return workspace
