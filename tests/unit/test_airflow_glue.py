"""plugins/mmr_airflow.py: Settings from Airflow Connections, deterministic errors fail without retries, every
triggering Asset event's dataset is served."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))  # as Airflow does for its plugins folder

from mmr_airflow import MmrHook, datasets_of, is_transient, log_data_docs, run_library  # noqa: E402


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
    with pytest.raises(AirflowFailException, match="differs"):  # a store error with no I/O cause: deterministic
        run_library(raises, StoreError("s3://mmr/clean/demo/a.png differs from its commit record"))
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


SECRET = "s3cr3t-Key-0123456789"


def store_connection(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """An ``aws``-type data store Connection with a recognisable secret; the AWS variables it exports undone after."""
    import json

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
                "MLFLOW_S3_ENDPOINT_URL", "MMR_DATA_URL", "MMR_LOCK_URL"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv(var, "")  # registered with monkeypatch, so whatever the hook exports is undone
        monkeypatch.delenv(var)
    monkeypatch.setenv("AIRFLOW_CONN_MMR_DATA_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "AKIDEXAMPLE", "password": SECRET,
        "extra": {"endpoint_url": endpoint, "region_name": "eu-west-1", "data_url": "s3://bucket/prefix"}}))


def test_the_hook_is_declared_as_a_provider_hook_and_reads_the_data_store_connection(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    assert (MmrHook.default_conn_name, MmrHook.conn_type, MmrHook.conn_name_attr, MmrHook.hook_name) == (
        "mmr_data_default", "aws", "data_conn_id", "mmretrieval")
    assert getattr(MmrHook(), MmrHook.conn_name_attr) == MmrHook.default_conn_name
    assert MmrHook().get_conn().data_url == ""  # no Connection: the environment's (none)
    store_connection(monkeypatch, "http://s3.internal:9000")
    settings = MmrHook().get_conn()
    assert settings.data_url == "s3://bucket/prefix" and settings.home == workspace
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET and os.environ["AWS_ACCESS_KEY_ID"] == "AKIDEXAMPLE"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://s3.internal:9000" == os.environ["MLFLOW_S3_ENDPOINT_URL"]
    assert os.environ["AWS_DEFAULT_REGION"] == "eu-west-1"


def test_test_connection_names_each_unreachable_service_and_never_prints_a_secret(
        workspace: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from tests.helpers.servers import free_port

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store_connection(monkeypatch, closed)
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", closed)
    monkeypatch.setenv("AIRFLOW_CONN_MILVUS_DEFAULT", f"http://root:{SECRET}@127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with caplog.at_level("DEBUG"):
        ok, message = MmrHook().test_connection()
    assert not ok
    assert "milvus:" in message and "mlflow:" in message and "data store:" in message, message
    assert SECRET not in message and SECRET not in caplog.text


def test_store_errors_are_retried_only_when_the_store_was_unreachable() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mmretrieval.core.errors import LockError, StoreError

    def store_error(message: str, cause: BaseException | None) -> StoreError:
        try:
            raise StoreError(message) from cause
        except StoreError as e:
            return e

    def raises(error: Exception) -> None:
        raise error

    unreachable = store_error("download of s3://b/clean/x@1 failed: connection refused", ConnectionRefusedError())
    missing = store_error("commit 1 of s3://b/clean/x is unusable: object(s) missing", FileNotFoundError("k"))
    corrupt = store_error("commit 1 of s3://b/clean/x: a.png differs from its commit record", None)
    assert is_transient(unreachable) and is_transient(LockError("lock coordinator unreachable"))
    assert not is_transient(missing) and not is_transient(corrupt)
    with pytest.raises(StoreError, match="connection refused"):  # not an AirflowFailException: retried
        run_library(raises, unreachable)
    for error in (missing, corrupt):
        with pytest.raises(AirflowFailException, match="mmr: commit 1"):
            run_library(raises, error)


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
