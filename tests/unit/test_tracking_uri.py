"""The MLflow store follows the workspace, also when one process works in several, and the library leaves the
process's MLflow settings (``mlflow.get_tracking_uri()``, ``MLFLOW_TRACKING_URI`` and other variables) as it found
them."""

import os
from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.settings import get_settings


@pytest.fixture
def no_user_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    for name in ("MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MMR_HOME"):
        monkeypatch.delenv(name, raising=False)
    before = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(None if before == mlflow.get_tracking_uri() else before)  # undo a failed test's change
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_settings_of_a_second_workspace_do_not_inherit_the_first_ones_mlflow_store(
        tmp_path: Path, no_user_uri: None) -> None:
    import mlflow

    before = mlflow.get_tracking_uri()
    first, second = get_settings(tmp_path / "a"), get_settings(tmp_path / "b")
    tracking.client(first)
    assert get_settings(tmp_path / "b").mlflow_uri == second.mlflow_uri != first.mlflow_uri
    assert mlflow.get_tracking_uri() == before != first.mlflow_uri  # the client has its URI; the process keeps its own


def test_a_tracking_uri_chosen_by_the_user_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMR_MLFLOW_TRACKING_URI", raising=False)
    chosen = f"sqlite:///{tmp_path / 'chosen.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    tracking.client(get_settings(tmp_path / "a"))
    assert get_settings(tmp_path / "b").mlflow_uri == chosen


def test_the_client_changes_no_environment_variable(tmp_path: Path, no_user_uri: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    before = dict(os.environ)
    tracking.client(get_settings(tmp_path / "a")).search_experiments()
    assert dict(os.environ) == before  # (it used to set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR)


@pytest.mark.parametrize("user_uri", [None, "other.db"])
def test_a_run_logs_to_the_workspace_store_and_the_process_keeps_its_tracking_uri(
        tmp_path: Path, no_user_uri: None, monkeypatch: pytest.MonkeyPatch, user_uri: str | None) -> None:
    import mlflow

    if user_uri is not None:  # someone else's store, chosen in this process before the library ran
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / user_uri}")
    before_uri, before_env = mlflow.get_tracking_uri(), dict(os.environ)
    settings = get_settings(tmp_path / "ws")
    with tracking.start_run(settings, "tiny", run_name="r", tags={"k": "v"}) as run:
        mlflow.log_metric("m", 1.0)  # the fluent API, as training uses it, goes to the workspace's store
        assert mlflow.get_tracking_uri() == settings.mlflow_uri
    assert mlflow.get_tracking_uri() == before_uri and dict(os.environ) == before_env
    assert tracking.client(settings).get_run(run.info.run_id).data.metrics == {"m": 1.0}
    with pytest.raises(RuntimeError, match="boom"), tracking.start_run(settings, "tiny", run_name="r", tags={}):
        raise RuntimeError("boom")
    assert mlflow.get_tracking_uri() == before_uri and dict(os.environ) == before_env  # restored on failure too
