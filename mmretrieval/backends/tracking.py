"""The only module that talks to MLflow: runs, the model registry and its aliases, model download.

One registered model per dataset (``mmr-<dataset>``). Aliases: ``challenger`` (newest trained), ``champion``
(serving), ``previous`` (the champion before, for rollback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.errors import ModelNotFoundError, TrackingError
from mmretrieval.core.io import atomic_dir
from mmretrieval.core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient


log = logging.getLogger(__name__)
MODEL_ARTIFACT = "model"
CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str
    source: str

    @property
    def uri(self) -> str:
        return version_uri(self.name, self.version)


def version_uri(name: str, version: str) -> str:
    """``models:/<name>/<version>``: how MLflow, and every message of ours, names a registered version."""
    return f"models:/{name}/{version}"


def client(settings: Settings) -> MlflowClient:
    """A client of this workspace's store; the process's MLflow settings (tracking URI, environment) stay as they
    are."""
    from mlflow import MlflowClient

    if settings.mlflow_uri.startswith("sqlite:///"):
        Path(settings.mlflow_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


@contextlib.contextmanager
def _fluent_store(settings: Settings) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.start_run``, ``mlflow.log_*``, used by training) logs to the process's tracking
    URI: point it at this workspace's store while the block runs, then put back exactly what was there (MLflow's own
    setting and ``MLFLOW_TRACKING_URI``, which ``mlflow.set_tracking_uri`` also writes)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before, before_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(settings.mlflow_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None: unset, as it was
        if before_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before_env


def experiment_id(settings: Settings, dataset: str) -> str:
    c = client(settings)
    name = settings.registered_model(dataset)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = settings.mlflow_artifacts
    if not location:  # a tracking server with its own artifact store
        return str(c.create_experiment(name))
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    return str(c.create_experiment(name, artifact_location=f"{location}/{name}"))


CODE_VERSION_VAR = "MMR_CODE_VERSION"


def git_sha(where: Path) -> str:
    """The code version: ``git rev-parse HEAD`` in ``where``; outside a git checkout (a container image has no
    ``.git``) the ``MMR_CODE_VERSION`` variable the image was built with; else ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return sha or os.environ.get("MMR_CODE_VERSION", "").strip() or "unknown"


@contextlib.contextmanager
def start_run(settings: Settings, dataset: str, run_name: str, tags: dict[str, str],
              run_id: str | None = None) -> Iterator[Any]:
    """An active MLflow run in the dataset's experiment (``run_id``: continue that run); FAILED if the block raises.
    The fluent API logs to this workspace's store inside the block only (:func:`_fluent_store`)."""
    import mlflow

    exp = experiment_id(settings, dataset)
    with _fluent_store(settings):
        if run_id is not None:
            with mlflow.start_run(run_id=run_id) as run:
                mlflow.set_tag("resumed", "true")
                yield run
            return
        with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags) as run:
            yield run


def log_artifacts(folder: Path, artifact_path: str = MODEL_ARTIFACT) -> None:
    """Log the files of ``folder`` under ``artifact_path`` of the active run (for a model: the pyfunc folder that
    :func:`mmretrieval.serving.pyfunc.log_model` writes; :func:`register` makes it a version). Raises
    :class:`TrackingError` without an active run."""
    import mlflow

    if mlflow.active_run() is None:
        raise TrackingError(f"logging {artifact_path!r} needs an active MLflow run")
    mlflow.log_artifacts(str(folder), artifact_path=artifact_path)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    """Log one file or folder into the active run."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_params(params: dict[str, Any]) -> None:
    """Log parameters of the active run (values as MLflow stores them: strings of at most 6,000 characters)."""
    import mlflow

    mlflow.log_params(params)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log metrics of the active run, at ``step`` (an epoch) when given."""
    import mlflow

    mlflow.log_metrics(metrics, step=step)


def log_dict(value: dict[str, Any], name: str) -> None:
    """Log ``value`` as the JSON artifact ``name`` of the active run."""
    import mlflow

    mlflow.log_dict(value, name)


def model_cache(settings: Settings, name: str, folder: str) -> Path:
    """``var/model-cache/<name>/<folder>``: where downloaded model artifacts are kept (versions never change)."""
    return settings.var_dir / "model-cache" / name / folder


def _fetch(settings: Settings, target: Path, what: str, **where: str) -> None:
    """Download the artifacts MLflow finds by ``where`` (``artifact_uri=`` or ``run_id=`` + ``artifact_path=``)
    and put them in ``target`` whole (:func:`~mmretrieval.core.io.atomic_dir`). Raises :class:`TrackingError`
    starting with ``what``."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(tracking_uri=settings.mlflow_uri, **where)
    except Exception as e:  # MLflow raises several unrelated types for a missing artifact
        raise TrackingError(f"{what}: {e}") from e
    with atomic_dir(target) as tmp:
        shutil.copytree(local, tmp, dirs_exist_ok=True)


def download_run_artifact(settings: Settings, run_id: str, artifact_path: str, target: Path, what: str) -> Path:
    """Copy the artifact folder ``artifact_path`` of run ``run_id`` into ``target`` (once: a folder already
    holding ``config.json`` is kept) and return ``target``. Raises :class:`TrackingError` naming ``what``."""
    if not (target / "config.json").is_file():
        _fetch(settings, target, f"{what} its {artifact_path!r} artifact does not download", run_id=run_id,
               artifact_path=artifact_path)
    return target


def register(settings: Settings, dataset: str, run_id: str) -> ModelRef:
    """Register the run's ``model`` artifact folder as a new version of the dataset's model."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registered_model(dataset)
    source = f"{c.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description=f"mmretrieval dual encoder for dataset {dataset!r}")
    mv = c.create_model_version(name, source=source, run_id=run_id)
    return ModelRef(name, str(mv.version), run_id, source)


def set_alias(settings: Settings, dataset: str, alias: str, version: str) -> None:
    client(settings).set_registered_model_alias(settings.registered_model(dataset), alias, version)


def get_alias(settings: Settings, dataset: str, alias: str) -> ModelRef | None:
    """The version behind an alias, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registered_model(dataset)
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return ModelRef(name, str(mv.version), str(mv.run_id), str(mv.source))


def get_version(settings: Settings, name: str, version: str) -> ModelRef:
    """A registered model version by model name (as recorded on a Milvus collection)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version(name, version)
    except MlflowException as e:
        raise ModelNotFoundError(f"model {name!r} has no version {version!r}") from e
    return ModelRef(name, str(mv.version), str(mv.run_id), str(mv.source))


def require_alias(settings: Settings, dataset: str, alias: str) -> ModelRef:
    ref = get_alias(settings, dataset, alias)
    if ref is None:
        hint = "run `mmr train` first" if alias == CHALLENGER else "run `mmr promote` after a passing evaluation"
        raise ModelNotFoundError(f"model {settings.registered_model(dataset)!r} has no {alias!r} alias: {hint}")
    return ref


def log_run(settings: Settings, run_id: str, metrics: dict[str, float] | None = None,
            tags: dict[str, str] | None = None, artifacts: list[Path] | None = None) -> None:
    """Add metrics, tags and files to an existing (possibly finished) run."""
    c = client(settings)
    for k, v in (metrics or {}).items():
        c.log_metric(run_id, k.replace("@", "_at_"), float(v))
    for k, v in (tags or {}).items():
        c.set_tag(run_id, k, v)
    for path in artifacts or []:
        c.log_artifact(run_id, str(path), artifact_path="reports")


def run_data(settings: Settings, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """The tags and params of a run (as MLflow stores them: strings)."""
    run = client(settings).get_run(run_id)
    return dict(run.data.tags or {}), dict(run.data.params or {})


def set_tags(tags: dict[str, str]) -> None:
    """Tag the active run."""
    import mlflow

    mlflow.set_tags(tags)


def run_file(settings: Settings, run_id: str, artifact_path: str, folder: Path) -> Path | None:
    """Download the file artifact ``artifact_path`` of a run into ``folder``; None when the run has no such file."""
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(folder),
                                                    tracking_uri=settings.mlflow_uri)
    except Exception as e:  # noqa: BLE001 - MLflow raises several unrelated types for a missing artifact
        log.info("run %s has no artifact %s (%s)", run_id, artifact_path, str(e).splitlines()[0][:200])
        return None
    return Path(local) if Path(local).is_file() else None


def version_tags(settings: Settings, ref: ModelRef) -> dict[str, str]:
    """The tags of a registered version (gate decisions, the re-ranker's gate)."""
    return dict(client(settings).get_model_version(ref.name, ref.version).tags or {})


def tag_version(settings: Settings, ref: ModelRef, tags: dict[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(ref.name, ref.version, k, v)


def log_dataset(name: str, data_version: str, manifest: Path, frame: pd.DataFrame,
                context: str = "training") -> str:
    """``mlflow.log_input`` on the active run: the dataset ``name`` with the manifest file's md5 as its digest (32
    hex characters; MLflow keeps 36), the manifest as source and its DVC ``data_version`` as a tag. Returns the
    digest. Raises :class:`TrackingError` when there is no active run or the manifest cannot be read."""
    import hashlib

    import mlflow

    if mlflow.active_run() is None:
        raise TrackingError(f"log_dataset({name!r}) needs an active MLflow run")
    try:
        digest = hashlib.md5(manifest.read_bytes(), usedforsecurity=False).hexdigest()
    except OSError as e:
        raise TrackingError(f"cannot read the manifest {manifest} of dataset {name!r}: {e}") from e
    data = mlflow.data.from_pandas(frame, source=str(manifest.resolve()), name=name, digest=digest)
    mlflow.log_input(data, context=context, tags={"data_version": data_version, "manifest": manifest.name})
    return digest


DESCRIBED_TAGS = ("data_version", "git_sha", "test_metrics", "gate.decision", "gate.reasons")


def describe_version(settings: Settings, ref: ModelRef, **tags: str) -> str:
    """Record ``tags`` on a model version (keys of :data:`DESCRIBED_TAGS`, ``.`` written as ``_`` in the keywords)
    and rewrite its description from all of them: data version, code version, test metrics, gate decision.
    Returns the description."""
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(ref.name, ref.version, k.replace("gate_", "gate."), v)
    have = c.get_model_version(ref.name, ref.version).tags
    lines = [f"mmretrieval dual encoder {ref.name} v{ref.version} (run {ref.run_id})."]
    labels = {"data_version": "Data version (DVC)", "git_sha": "Code version", "test_metrics": "Test metrics",
              "gate.decision": "Gate decision", "gate.reasons": "Gate reasons"}
    lines += [f"{labels[k]}: {have[k]}" for k in DESCRIBED_TAGS if have.get(k)]
    if not have.get("gate.decision"):
        lines.append("Gate decision: not decided yet")
    text = "\n".join(lines)
    c.update_model_version(ref.name, ref.version, description=text)
    return text


PYFUNC_FILES = "retrieval_model"  # the pyfunc layout's artifacts/<PYFUNC_FILES>/ holds config.json + weights


def model_files(folder: Path) -> Path:
    """The folder holding ``config.json`` + ``weights.safetensors`` inside a downloaded model folder: the pyfunc
    layout's ``artifacts/retrieval_model/``, or ``folder`` itself for versions logged before the pyfunc flavor."""
    nested = folder / "artifacts" / PYFUNC_FILES
    return nested if (nested / "config.json").is_file() else folder


def downloaded(settings: Settings, name: str, version: str) -> Path | None:
    """The folder with ``config.json`` + ``weights.safetensors`` of version ``version`` of ``name`` when
    :func:`download` already fetched it into ``var/model-cache`` (versions never change), else None. Asks MLflow
    nothing: a query whose model is cached needs no registry."""
    files = model_files(model_cache(settings, name, version))
    return files if (files / "config.json").is_file() else None


def download(settings: Settings, ref: ModelRef) -> Path:
    """The folder with ``config.json`` + ``weights.safetensors`` of a version (inside the MLflow model folder it
    downloads and caches under ``var/model-cache``; versions never change). Raises :class:`TrackingError`."""
    cached = downloaded(settings, ref.name, ref.version)
    if cached is not None:
        return cached
    target = model_cache(settings, ref.name, ref.version)
    _fetch(settings, target, f"cannot download {ref.uri} from {ref.source}", artifact_uri=ref.source)
    return model_files(target)


def model_config(settings: Settings, ref: ModelRef) -> dict[str, Any]:
    """The ``config.json`` of a registered version as a dict, without loading its weights (the model is built from
    it above this layer: :func:`mmretrieval.serving.loading.model_config`)."""
    return json.loads((download(settings, ref) / "config.json").read_text(encoding="utf-8"))
