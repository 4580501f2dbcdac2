"""plugins/mmr_airflow.py: Settings from Airflow Connections, deterministic errors fail without retries, every
triggering Asset event's dataset is served."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))  # as Airflow does for its plugins folder

from mmr_airflow import MmrHook, datasets_of, log_data_docs, run_library  # noqa: E402


def events(*names: str) -> dict:
    return {"triggering_asset_events": {"mmr_clean_data": [SimpleNamespace(extra={"dataset": n}) for n in names]},
            "params": {"dataset": "demo"}}


def test_every_dataset_of_the_consumed_events_is_served_once_in_order() -> None:
    assert datasets_of(events("flickr", "fsdd", "flickr")) == ["flickr", "fsdd"]


def test_without_events_the_param_decides_and_all_means_every_listed_dataset(workspace: Path) -> None:
    (workspace / "params.yaml").write_text("datasets: [alpha, beta]\n")
    assert datasets_of({"params": {"dataset": "beta"}}) == ["beta"]
    assert datasets_of({"params": {"dataset": "all"}}) == ["alpha", "beta"]


def test_deterministic_library_errors_fail_the_task_and_transient_ones_keep_their_retries() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mmretrieval.core.errors import AliasNotFoundError, IndexStoreError, LockError, StoreError, ValidationFailed

    def raises(error: Exception) -> None:
        raise error

    with pytest.raises(AirflowFailException, match="mmr: 2 rows share 1 id"):
        run_library(raises, ValidationFailed("2 rows share 1 id"))
    with pytest.raises(AirflowFailException, match="no collection behind alias"):
        run_library(raises, AliasNotFoundError("no collection behind alias 'mmr_x'"))
    with pytest.raises(IndexStoreError):  # Milvus unreachable: not an AirflowFailException, so retried
        run_library(raises, IndexStoreError("cannot open Milvus at 'http://milvus:19530'"))
    with pytest.raises(StoreError):  # the data store unreachable: retried too
        run_library(raises, StoreError("download of s3://mmr/clean/demo failed"))
    with pytest.raises(LockError):  # the lock coordinator unreachable: retried too
        run_library(raises, LockError("lock coordinator postgresql://db:5432/mmr unreachable"))
    assert run_library(lambda a, b=0: a + b, 2, b=3) == 5


def test_the_hook_reads_milvus_and_mlflow_connections_and_falls_back_to_the_environment(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = MmrHook().get_settings()
    assert plain.milvus_uri == str(workspace / "var" / "milvus.db")  # no Connection: the MMR_* defaults
    monkeypatch.setenv("AIRFLOW_CONN_MILVUS_DEFAULT", "http://root:Milvus@milvus.internal:19530")
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", "http://mlflow.internal:5000")
    settings = MmrHook().get_settings()
    assert settings.milvus_uri == "http://milvus.internal:19530" and settings.milvus_token == "root:Milvus"
    assert settings.mlflow_uri == "http://mlflow.internal:5000" and settings.mlflow_artifacts == ""


def test_the_validate_task_logs_where_the_data_docs_page_is(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mmretrieval.core.settings import get_settings

    settings = get_settings(workspace)
    with caplog.at_level("INFO", logger="airflow.task"):
        assert log_data_docs(settings, "demo") is None
    assert "no data docs page for demo" in caplog.text
    page = workspace / "data/validated/demo/data_docs.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    caplog.clear()
    with caplog.at_level("INFO", logger="airflow.task"):
        assert log_data_docs(settings, "demo") == page
    assert f"data docs of demo (Great Expectations, offline): {page.resolve().as_uri()}" in caplog.text
