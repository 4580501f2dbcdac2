"""Airflow glue for mmretrieval (the library itself never imports Airflow).

* :class:`MmrHook` is written as a provider's hook (``default_conn_name``, ``conn_type``, ``get_conn()``,
  ``test_connection()``): the library's :class:`~mmretrieval.core.settings.Settings` from the Connections
  ``mmr_data_default`` (the shared data store, an ``aws``-type Connection), ``milvus_default`` and
  ``mlflow_default``, each falling back to the ``MMR_*`` environment when the Connection does not exist.
* :func:`run_library` calls a library function and turns its *deterministic* errors (a bad manifest, a failed
  validation, a model that does not load, a pinned input that changed, a store commit whose objects are missing or
  differ) into ``AirflowFailException``: retrying cannot help, so the task fails at once. Transient ones (Milvus,
  MLflow, the data store or the lock coordinator unreachable: :func:`is_transient`) stay ordinary exceptions and use
  the task's retries.
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
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowFailException

T = TypeVar("T")
log = logging.getLogger("airflow.task")
MILVUS_WRITER_POOL = "mmr_milvus_writer"


class MmrHook(BaseHook):
    """The library's :class:`~mmretrieval.core.settings.Settings` from Airflow Connections, as a provider's hook.

    Three Connections, each optional (a missing one leaves the ``MMR_*`` environment's value):

    * ``mmr_data_default`` (:attr:`default_conn_name`, type ``aws`` as the Amazon provider defines it, or any type):
      the shared data store. ``login``/``password``: access key id and secret; ``extra``: ``data_url``
      (``s3://bucket/prefix``, -> ``MMR_DATA_URL``), ``endpoint_url`` (an S3-compatible server), ``region_name``,
      ``lock_url`` (-> ``MMR_LOCK_URL``). Key, secret, endpoint and region are exported to this process's
      environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``;
      ``MLFLOW_S3_ENDPOINT_URL``), where s3fs, DVC and MLflow read them.
    * ``milvus_default``: ``host``/``port``/``schema`` -> the Milvus URI, ``login``:``password`` -> its token.
    * ``mlflow_default``: the tracking server's URI (``http://host:port``).

    Secrets (password, token, secret key) never reach a log line or a message of this hook: Airflow masks
    Connection passwords in task logs, and :meth:`test_connection` scrubs them from the errors it reports.
    """

    conn_name_attr = "data_conn_id"
    default_conn_name = "mmr_data_default"
    conn_type = "aws"
    hook_name = "mmretrieval"

    def __init__(self, milvus_conn_id: str = "milvus_default", mlflow_conn_id: str = "mlflow_default",
                 data_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.milvus_conn_id, self.mlflow_conn_id, self.data_conn_id = milvus_conn_id, mlflow_conn_id, data_conn_id
        self._secrets: list[str] = []

    def _connection(self, conn_id: str) -> Any:
        try:
            return self.get_connection(conn_id)
        except Exception:  # noqa: BLE001 - Airflow raises its own "not found" types across versions; fall back
            return None

    def get_conn(self) -> Any:
        """Settings with what the Connections give (class doc); the environment's values where none exists."""
        from mmretrieval.core.settings import get_settings

        settings = get_settings()
        changes = self._milvus() | self._mlflow() | self._data_store()
        return settings.model_copy(update=changes) if changes else settings

    get_settings = get_conn  # the name the DAG file uses

    def _milvus(self) -> dict[str, str]:
        milvus = self._connection(self.milvus_conn_id)
        if milvus is None or not milvus.host:
            return {}
        changes = {"milvus_uri": f"{milvus.schema or 'http'}://{milvus.host}:{milvus.port or 19530}"}
        if milvus.login:
            changes["milvus_token"] = f"{milvus.login}:{milvus.password or ''}"
            self._secrets += [milvus.password or "", changes["milvus_token"]]
        return changes

    def _mlflow(self) -> dict[str, str]:
        mlflow = self._connection(self.mlflow_conn_id)
        if mlflow is None or not mlflow.host:
            return {}
        uri = mlflow.get_uri()
        uri = uri if "://" in str(mlflow.host) else uri.replace("mlflow://", "http://", 1)
        return {"mlflow_uri": uri, "mlflow_artifacts": ""}  # a tracking server keeps its own artifact store

    def _data_store(self) -> dict[str, str]:
        conn = self._connection(self.data_conn_id)
        if conn is None:
            return {}
        extra = conn.extra_dejson or {}
        exported = {"AWS_ACCESS_KEY_ID": conn.login, "AWS_SECRET_ACCESS_KEY": conn.password,
                    "AWS_ENDPOINT_URL": extra.get("endpoint_url"), "MLFLOW_S3_ENDPOINT_URL": extra.get("endpoint_url"),
                    "AWS_DEFAULT_REGION": extra.get("region_name")}
        os.environ.update({k: str(v) for k, v in exported.items() if v})
        self._secrets.append(conn.password or "")
        return {k: str(extra[v]) for k, v in (("data_url", "data_url"), ("lock_url", "lock_url")) if extra.get(v)}

    def test_connection(self) -> tuple[bool, str]:
        """Reach every configured service for real (Milvus: list collections; MLflow: search experiments; the
        data store: list its bucket; the lock coordinator: connect). ``(True, "...")`` when all answered, else
        ``(False, message)`` naming each that did not; no secret in either."""
        try:
            settings = self.get_conn()
        except Exception as e:  # noqa: BLE001 - reported, as Airflow's "Test" button expects
            return False, self.scrub(f"settings: {e}")
        checks = {"milvus": _ping_milvus, "mlflow": _ping_mlflow}
        if settings.data_url:
            checks["data store"] = _ping_store
        if settings.lock_url:
            checks["lock coordinator"] = _ping_locks
        problems, reached = [], []
        for name, check in checks.items():
            try:
                reached.append(f"{name} ({check(settings)})")
            except Exception as e:  # noqa: BLE001 - every failure is reported, by service
                problems.append(f"{name}: {type(e).__name__}: {e}")
        if problems:
            return False, self.scrub("; ".join(problems))
        return True, self.scrub("reached " + ", ".join(reached))

    def scrub(self, text: str) -> str:
        """``text`` with every secret this hook read replaced by ``***``."""
        for secret in sorted({s for s in self._secrets if s}, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text


def _ping_milvus(settings: Any) -> str:
    from mmretrieval.backends.index import MilvusIndex, safe_uri

    with MilvusIndex(settings.milvus_uri, settings.milvus_token) as ix:
        return f"{safe_uri(settings.milvus_uri)}, {len(ix.collections())} collection(s)"


def _ping_mlflow(settings: Any) -> str:
    from mmretrieval.backends import tracking

    tracking.client(settings).search_experiments(max_results=1)
    return settings.mlflow_uri


def _ping_store(settings: Any) -> str:
    from mmretrieval.backends.store import open_fs

    fs, root = open_fs(settings.data_url)
    fs.ls(root.split("/", 1)[0])  # the bucket: FileNotFoundError when it does not exist
    return settings.data_url


def _ping_locks(settings: Any) -> str:
    from mmretrieval.backends.coordination import advisory_lock

    with advisory_lock(settings.lock_url, "mmr-connection-test"):
        pass
    return "advisory locks"


def is_transient(error: BaseException) -> bool:
    """True for errors a retry can outlive: Milvus, MLflow, the lock coordinator or the data store unreachable (a
    :class:`StoreError` caused by an I/O error other than a missing object or a refused access). A missing commit,
    an object that differs from its commit record or a bad store URL is deterministic."""
    from mmretrieval.core.errors import IndexStoreError, LockError, StoreError, TrackingError

    if isinstance(error, (IndexStoreError, TrackingError, LockError)):
        return True
    if isinstance(error, StoreError):
        cause = error.__cause__
        return isinstance(cause, OSError) and not isinstance(cause, (FileNotFoundError, PermissionError))
    return False


def run_library(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; deterministic library errors fail the task without retries (:func:`is_transient`
    sorts them)."""
    from mmretrieval.core.errors import AliasNotFoundError, MMRError, ModelNotFoundError

    try:
        return fn(*args, **kwargs)
    except (AliasNotFoundError, ModelNotFoundError) as e:
        raise AirflowFailException(f"mmr: {e}") from e
    except MMRError as e:
        if is_transient(e):
            raise  # worth the task's retries
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
