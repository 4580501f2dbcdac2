"""``mmr info`` and ``mmr search`` against a published dataset import only what they use (issue 23, point 8):
``sys.modules`` of a fresh interpreter after the command, wrapped around ``mmretrieval.cli.main``."""

import json
import os

import pytest

from mmretrieval.core.settings import Settings
from tests.helpers.processes import imported, modules_after

pytestmark = pytest.mark.integration

NEVER = ("airflow", "great_expectations")
NOT_FOR_INFO = (*NEVER, "torch", "torchvision", "sentence_transformers")
NOT_FOR_SEARCH = (*NEVER, "mmretrieval.training", "mmretrieval.stages")
OVERRIDES = ("MMR_PARAMS", "MMR_MILVUS_URI", "MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MMR_MLFLOW_ARTIFACTS",
             "MMR_DATASET")


def run_in(settings: Settings, argv: list[str]) -> dict:
    """``mmr ARGV`` in the published workspace, with none of this process's overrides of its stores."""
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES} | {"MMR_HOME": str(settings.home)}
    after = modules_after(argv, cwd=settings.home, env=env)
    assert after["rc"] == 0, after["stderr"][-2000:]
    return after


def test_info_imports_no_torch_sentence_transformers_airflow_or_gx(published_tiny: Settings) -> None:
    after = run_in(published_tiny, ["info", "--dataset", "tiny"])
    info = json.loads(after["stdout"])
    assert info["alias"] == "mmr_tiny" and info["rows"] > 0
    assert imported(after["modules"], NOT_FOR_INFO) == []


def test_search_imports_no_airflow_gx_or_training_code(published_tiny: Settings) -> None:
    after = run_in(published_tiny, ["search", "a red square", "--dataset", "tiny", "--k", "3", "--json"])
    hits = [json.loads(line) for line in after["stdout"].splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert imported(after["modules"], NOT_FOR_SEARCH) == []
    assert imported(after["modules"], ("torch",)) == ["torch"]  # the listing does see what a query loads
