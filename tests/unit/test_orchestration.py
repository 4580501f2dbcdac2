"""`mmr dag-test` finds the DAG and plugins folders from the environment, never from where the library is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmretrieval import orchestration
from mmretrieval.core.errors import ConfigError
from mmretrieval.core.settings import get_settings
from tests.helpers.workspace import REPO, mmr


def checkout(root: Path) -> Path:
    """A workspace holding the repository's dags/ and plugins/, as a deployment of a non-editable install would."""
    for folder in ("dags", "plugins"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def test_the_dag_folder_defaults_to_the_workspace_not_to_the_installed_library(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MMR_DAGS_FOLDER", "MMR_PLUGINS_FOLDER", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER",
                "AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        monkeypatch.delenv(var, raising=False)
    home = checkout(tmp_path / "ws")
    env = orchestration.airflow_env(get_settings(home))
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(home / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(home / "plugins")
    assert "__file__" not in Path(orchestration.__file__).read_text(encoding="utf-8")  # no path from the install


def test_the_dag_folder_comes_from_mmr_dags_folder_with_plugins_beside_it(tmp_path: Path) -> None:
    elsewhere = checkout(tmp_path / "repo")
    dags, plugins = orchestration.airflow_folders(get_settings(tmp_path / "ws"),
                                                  {"MMR_DAGS_FOLDER": str(elsewhere / "dags")})
    assert (dags, plugins) == (elsewhere / "dags", elsewhere / "plugins")
    _, plugins = orchestration.airflow_folders(get_settings(tmp_path / "ws"), {
        "MMR_DAGS_FOLDER": str(elsewhere / "dags"), "MMR_PLUGINS_FOLDER": str(REPO / "plugins")})
    assert plugins == REPO / "plugins"


def test_a_missing_dag_or_plugins_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    settings = get_settings(tmp_path / "ws")
    with pytest.raises(ConfigError, match=f"DAG folder '{tmp_path / 'ws' / 'dags'}' does not exist.*MMR_DAGS_FOLDER"):
        orchestration.airflow_folders(settings, {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no mmr_pipeline.py"):
        orchestration.airflow_folders(settings, {"MMR_DAGS_FOLDER": str(tmp_path / "empty"),
                                                 "MMR_PLUGINS_FOLDER": str(REPO / "plugins")})
    with pytest.raises(ConfigError, match=f"plugins folder '{tmp_path / 'plugins'}' does not exist"):
        orchestration.airflow_folders(settings, {"MMR_DAGS_FOLDER": str(tmp_path / "empty")})


def test_mmr_dag_test_without_a_dag_folder_fails_in_one_line_before_airflow_starts(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    out = mmr("dag-test", "--dataset", "demo", cwd=tmp_path / "ws",
              env={"MMR_HOME": str(tmp_path / "ws"), "MMR_DAGS_FOLDER": "", "AIRFLOW__CORE__DAGS_FOLDER": ""})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"mmr: error: the Airflow DAG folder '{tmp_path / 'ws' / 'dags'}' does not exist: set MMR_DAGS_FOLDER to the "
        "dags/ folder of the mmretrieval repository")
    assert not (tmp_path / "ws" / "var" / "airflow").exists()
