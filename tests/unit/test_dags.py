"""DAG integrity: every DAG file imports cleanly, is configured sanely, and parses without heavy imports."""

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = ["torch", "torchvision", "mlflow", "pymilvus", "great_expectations", "sentence_transformers", "pandas"]
DAG_IDS = ["mmr_pipeline", "mmr_prepare", "mmr_model", "mmr_serve"]  # the README names them to trigger


def declared_dag_ids(path: Path) -> list[str]:
    """The ``dag_id=`` of every ``@dag(...)`` / ``DAG(...)`` call in a DAG file, in source order (no Airflow)."""
    return [kw.value.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Call) for kw in node.keywords
            if kw.arg == "dag_id" and isinstance(kw.value, ast.Constant)]


def test_the_dag_folder_declares_exactly_the_documented_dags() -> None:
    """The files the other checks of this module parse are the ones that declare the project's DAGs."""
    assert {f.name: declared_dag_ids(f) for f in DAG_FILES} == {"mmr_pipeline.py": DAG_IDS}


def test_parsing_a_dag_file_imports_nothing_heavy() -> None:
    code = (
        "import json, runpy, sys\n"
        f"sys.path[:0] = [{str(REPO / 'dags')!r}, {str(REPO / 'plugins')!r}]  # as Airflow does for its folders\n"
        f"for f in {json.dumps([str(f) for f in DAG_FILES])}:\n"
        "    runpy.run_path(f)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_dagbag_has_no_import_errors_and_tasks_have_retries_and_tags(tmp_path: Path) -> None:
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "  'dags': {d.dag_id: {'tags': sorted(d.tags), 'tasks': [t.task_id for t in d.tasks],\n"
        "           'retries': [t.retries for t in d.tasks], 'schedule': str(getattr(d.timetable, 'asset_condition',\n"
        "           None))} for d in bag.dags.values()}}))\n"
    )
    env = {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin",
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),  # Airflow puts its DAG and plugins folders on sys.path
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    dag = info["dags"]["mmr_pipeline"]
    assert dag["tags"] == ["mmretrieval"]
    assert dag["tasks"] == ["prepare.datasets", "prepare.validate", "prepare.clean", "prepare.augment", "model.train",
                            "model.evaluate", "model.rerank", "model.promote", "serve.embed_plan", "serve.shard_work",
                            "serve.embed_shard", "serve.embed", "serve.publish_build", "serve.publish_check",
                            "serve.publish"]
    assert all(r >= 1 for r in dag["retries"])
    dags = info["dags"]
    assert sorted(dags) == sorted(DAG_IDS)
    assert dags["mmr_prepare"]["tasks"] == ["datasets", "validate", "clean", "augment"]
    assert dags["mmr_model"]["tasks"] == ["datasets", "train", "evaluate", "rerank", "promote"]
    assert "mmr_clean_data" in dags["mmr_model"]["schedule"]
    assert dags["mmr_serve"]["tasks"] == ["datasets", "embed_plan", "shard_work", "embed_shard", "embed",
                                          "publish_build", "publish_check", "publish"]
    assert "mmr_champion_model" in dags["mmr_serve"]["schedule"]
    assert all(all(r >= 1 for r in d["retries"]) and d["tags"] == ["mmretrieval"] for d in dags.values())


def test_dvc_yaml_defines_every_stage_for_every_dataset() -> None:
    env = {"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(Path(sys.executable).with_name("dvc")), "stage", "list"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert names == [f"{verb}@demo" for verb in ("validate", "clean", "augment", "train", "evaluate", "rerank",
                                                  "promote", "embed", "publish")]
