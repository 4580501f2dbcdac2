"""Airflow glue for mmretrieval (the library itself never imports Airflow).

* :class:`MmrHook` builds the library's :class:`~mmretrieval.core.settings.Settings` from Airflow Connections, as an
  Airflow user expects: ``milvus_default`` (``host``/``port``/``schema`` -> URI, ``login``:``password`` -> token) and
  ``mlflow_default`` (its URI), each falling back to the ``MMR_*`` environment when the Connection does not exist.
* :func:`run_library` calls a library function and turns its *deterministic* errors (a bad manifest, a failed
  validation, a model that does not load, a pinned input that changed) into ``AirflowFailException``: retrying
  cannot help, so the task fails at once. Transient ones (Milvus, MLflow, the data store or the lock coordinator
  unreachable) stay ordinary exceptions and use the task's retries.
* :func:`datasets_of` reads the datasets a run works on: every dataset named by the Asset events that triggered it
  (several events consumed by one run are all served, none is dropped), else the run's ``dataset`` param
  (``all``: every dataset listed in ``params.yaml``).
* :func:`log_data_docs` writes the validation's data docs page (passing or failed) into the task log as a
  ``file://`` address, after the validate task ran, whatever its outcome.
* :data:`MILVUS_WRITER_POOL`: tasks that write to the index share this one-slot pool (Milvus Lite allows one process
  per file, across DAGs); ``mmr dag-test`` creates it, on a scheduler run ``airflow pools set mmr_milvus_writer 1
  "Milvus Lite writers"`` once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException

T = TypeVar("T")
log = logging.getLogger("airflow.task")
MILVUS_WRITER_POOL = "mmr_milvus_writer"


class MmrHook(BaseHook):
    """Settings for the library from Airflow Connections (``milvus_default``, ``mlflow_default``) or the environment."""

    conn_name_attr = "milvus_conn_id"
    hook_name = "mmretrieval"

    def __init__(self, milvus_conn_id: str = "milvus_default", mlflow_conn_id: str = "mlflow_default") -> None:
        super().__init__()
        self.milvus_conn_id, self.mlflow_conn_id = milvus_conn_id, mlflow_conn_id

    def _connection(self, conn_id: str) -> Any:
        try:
            return self.get_connection(conn_id)
        except Exception:  # noqa: BLE001 - Airflow raises its own "not found" types across versions; fall back
            return None

    def get_settings(self) -> Any:
        from mmretrieval.core.settings import get_settings

        settings = get_settings()
        changes: dict[str, str] = {}
        milvus = self._connection(self.milvus_conn_id)
        if milvus is not None and milvus.host:
            scheme = milvus.schema or "http"
            changes["milvus_uri"] = f"{scheme}://{milvus.host}:{milvus.port or 19530}"
            if milvus.login:
                changes["milvus_token"] = f"{milvus.login}:{milvus.password or ''}"
        mlflow = self._connection(self.mlflow_conn_id)
        if mlflow is not None and mlflow.host:
            uri = mlflow.get_uri()
            changes["mlflow_uri"] = uri if "://" in str(mlflow.host) else uri.replace("mlflow://", "http://", 1)
            changes["mlflow_artifacts"] = ""  # a tracking server keeps its own artifact store
        return settings.model_copy(update=changes) if changes else settings


def run_library(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; deterministic library errors fail the task without retries."""
    from mmretrieval.core import errors
    from mmretrieval.core.errors import AliasNotFoundError, MMRError, ModelNotFoundError

    try:
        return fn(*args, **kwargs)
    except (AliasNotFoundError, ModelNotFoundError) as e:
        raise AirflowFailException(f"mmr: {e}") from e
    except (errors.IndexStoreError, errors.TrackingError, errors.StoreError, errors.LockError):
        raise  # Milvus, MLflow, the data store or the lock coordinator unreachable: worth the task's retries
    except MMRError as e:
        raise AirflowFailException(f"mmr: {e}") from e


def datasets_of(context: dict[str, Any]) -> list[str]:
    """The datasets of this run: each one named by a triggering Asset event (in event order, once), else the
    ``dataset`` param (``all``: every dataset in params.yaml)."""
    names: list[str] = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            name = (getattr(event, "extra", None) or {}).get("dataset")
            if name and name not in names:
                names.append(str(name))
    if names:
        return names
    param = str(context["params"]["dataset"])
    if param == "all":
        from mmretrieval.core.settings import get_settings

        return list(get_settings().params.datasets)
    return [param]


def log_data_docs(settings: Any, dataset: str) -> Path | None:
    """Log (task log, INFO) where the data docs page of ``dataset``'s latest validation is; None when there is none."""
    page = settings.layout(dataset).data_docs
    if not page.is_file():
        log.info("mmr: no data docs page for %s at %s", dataset, page)
        return None
    log.info("mmr: data docs of %s (Great Expectations, offline): %s", dataset, page.resolve().as_uri())
    return page
