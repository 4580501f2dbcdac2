"""One path layout: stage file names live in ``mmretrieval/core/layout.py`` only, and stages find each other's outputs
through it. That no stage imports another (nor serving or training a stage) is an import-linter contract, checked
in test_architecture.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mmretrieval.core import layout as layout_module
from mmretrieval.core.errors import ConfigError
from mmretrieval.core.settings import get_settings

PACKAGE = Path(layout_module.__file__).resolve().parents[1]  # the mmretrieval package


def layout_file_names() -> set[str]:
    """Every file name the layout owns, taken from a real Layout's paths."""
    lay = get_settings(Path("/ws")).layout("demo")
    paths = [getattr(lay, name) for name in dir(type(lay)) if isinstance(getattr(type(lay), name), property)]
    paths += [lay.evaluation("1"), lay.embedding_summary("1"), lay.stage_result("train")]
    return {p.name for p in paths if "." in p.name}


def string_constants(tree: ast.AST) -> list[str]:
    """String literals that are not docstrings."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_the_layout_owns_the_file_names_of_every_stage_output() -> None:
    names = layout_file_names()
    assert {"manifest.parquet", "report.json", "policy.json", "rows.parquet", "evaluate.json", "embed.json"} <= names
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "layout.py":
            continue
        found = {s for s in string_constants(ast.parse(path.read_text(encoding="utf-8"))) if s in names}
        if found:
            offenders[str(path.relative_to(PACKAGE))] = sorted(found)
    assert offenders == {}


def test_layout_paths_sit_under_the_workspace_and_refuse_a_bad_dataset_name(tmp_path: Path) -> None:
    lay = get_settings(tmp_path).layout("demo")
    assert lay.clean_manifest == tmp_path / "data" / "clean" / "demo" / "manifest.parquet"
    assert lay.embeddings("7") == tmp_path / "data" / "embeddings" / "demo" / "v7"
    assert lay.evaluation("7").parent.parent == lay.reports
    assert lay.promotions_log == tmp_path / "var" / "promotions" / "demo.jsonl"
    with pytest.raises(ConfigError, match="'../x'"):
        get_settings(tmp_path).layout("../x")


def test_stage_results_are_typed_and_serialise_to_their_json_form() -> None:
    from mmretrieval.core.contracts import EmbedStart, PublishResult, TrainResult

    trained = TrainResult("demo", "d" * 32, "run1", "mmr-demo", "3", 2, 4, {"val_recall@1": 0.5}, 12.5)
    assert trained.model_version == trained["model_version"] == "3"
    assert list(trained.to_json()) == ["dataset", "data_version", "run_id", "model", "model_version", "best_epoch",
                                       "epochs_run", "metrics", "seconds", "skipped", "reason",
                                       "features"]
    assert trained.skipped is False
    assert trained.features == {}  # no frozen backbone: no cached features
    with pytest.raises(AttributeError):
        trained.model_version = "4"  # type: ignore[misc]  # frozen
    unchanged = PublishResult("demo", "mmr_demo", "c1", changed=False)
    assert unchanged.to_json() == {"dataset": "demo", "alias": "mmr_demo", "collection": "c1", "changed": False,
                                   "previous": None}
    start = EmbedStart("3", "d" * 32, [0, 1])
    assert start.pinned.model_version == "3" and {**start} == start.to_json()
