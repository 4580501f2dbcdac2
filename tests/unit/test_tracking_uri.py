"""The MLflow store follows the workspace, also when one process works in several."""

from pathlib import Path

import pytest

from mmretrieval import tracking
from mmretrieval.config import get_settings


def test_settings_of_a_second_workspace_do_not_inherit_the_first_ones_mlflow_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MMR_HOME"):
        monkeypatch.delenv(name, raising=False)
    first, second = get_settings(tmp_path / "a"), get_settings(tmp_path / "b")
    tracking.client(first)  # points MLflow's fluent API at the first store
    assert get_settings(tmp_path / "b").mlflow_uri == second.mlflow_uri != first.mlflow_uri
    import mlflow

    assert mlflow.get_tracking_uri() == first.mlflow_uri  # runs still go to the store last asked for


def test_a_tracking_uri_chosen_by_the_user_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMR_MLFLOW_TRACKING_URI", raising=False)
    chosen = f"sqlite:///{tmp_path / 'chosen.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    tracking.client(get_settings(tmp_path / "a"))
    assert get_settings(tmp_path / "b").mlflow_uri == chosen
