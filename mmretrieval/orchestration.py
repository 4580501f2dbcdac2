"""Run the project's Airflow DAG locally through the ``airflow`` CLI (``airflow dags test``), Airflow on SQLite.

This module starts Airflow as a subprocess and never imports it: the library stays Airflow-free. Used by
``mmr dag-test``, ``make demo`` and the integration test.

The DAG and plugins folders are not part of the installed package; where they are comes from the environment:
``MMR_DAGS_FOLDER`` (else Airflow's own ``AIRFLOW__CORE__DAGS_FOLDER``, else ``$MMR_HOME/dags``) and
``MMR_PLUGINS_FOLDER`` (else ``AIRFLOW__CORE__PLUGINS_FOLDER``, else ``plugins/`` beside the DAG folder, as in a
checkout of the repository). A folder that is not there is an error naming it, before Airflow starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from mmretrieval.core.errors import ConfigError, MMRError
from mmretrieval.core.settings import Settings

DAG_ID = "mmr_pipeline"
WRITER_POOL = "mmr_milvus_writer"  # the pool of plugins/mmr_airflow.py


def airflow_folders(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """The DAG and plugins folders Airflow is pointed at (module doc); a missing one is a :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    dags = Path(env.get("MMR_DAGS_FOLDER") or env.get("AIRFLOW__CORE__DAGS_FOLDER") or settings.home / "dags")
    plugins = Path(env.get("MMR_PLUGINS_FOLDER") or env.get("AIRFLOW__CORE__PLUGINS_FOLDER") or dags.parent / "plugins")
    for kind, folder, variable in (("DAG", dags, "MMR_DAGS_FOLDER"), ("plugins", plugins, "MMR_PLUGINS_FOLDER")):
        if not folder.is_dir():
            raise ConfigError(f"the Airflow {kind} folder {str(folder)!r} does not exist: set {variable} to the "
                              f"{'dags' if kind == 'DAG' else 'plugins'}/ folder of the mmretrieval repository")
    if not (dags / f"{DAG_ID}.py").is_file():
        raise ConfigError(f"the Airflow DAG folder {str(dags)!r} has no {DAG_ID}.py: set MMR_DAGS_FOLDER to the "
                          "dags/ folder of the mmretrieval repository")
    return dags.resolve(), plugins.resolve()


def airflow_env(settings: Settings, airflow_home: Path | None = None) -> dict[str, str]:
    """Environment for a local Airflow: SQLite metadata under ``var/airflow``, the DAGs of :func:`airflow_folders`."""
    dags, plugins = airflow_folders(settings)
    home = airflow_home or settings.var_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("AIRFLOW_HOME", str(home))
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(plugins)
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "2")
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30")
    env.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
    env["MMR_HOME"] = str(settings.home)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    return env


def dag_test(dataset: str, settings: Settings, airflow_home: Path | None = None) -> None:
    """``airflow db migrate`` (first time) then ``airflow dags test mmr_pipeline`` for one dataset."""
    env = airflow_env(settings, airflow_home)
    airflow = str(Path(sys.executable).with_name("airflow"))
    db = Path(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///"))
    if not db.exists():
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        # index writers share a one-slot pool (plugins/mmr_airflow.py: Milvus Lite allows one process per file)
        subprocess.run([airflow, "pools", "set", WRITER_POOL, "1", "writers of the Milvus index"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
    proc = subprocess.run([airflow, "dags", "test", DAG_ID, "-c", json.dumps({"dataset": dataset})], env=env)
    if proc.returncode != 0:
        raise MMRError(f"`airflow dags test {DAG_ID}` failed for dataset {dataset!r} (exit {proc.returncode})")
