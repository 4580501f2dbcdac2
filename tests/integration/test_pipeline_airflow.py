"""The whole platform on the bundled sample through `airflow dags test`, against real DVC, GX, MLflow and Milvus Lite.

Measured on the 2-core dev machine (see docs/benchmarks.md): photo captions find their photo in the top 5 for
about 95 % of the 57 queries; the assertion keeps a margin below that.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, make_workspace, mmr

pytestmark = pytest.mark.integration
HIT_RATE_FLOOR = 0.8


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = make_workspace(tmp_path_factory.mktemp("demo") / "ws", (REPO / "params.yaml").read_text())
    env = {"MMR_HOME": str(root)}
    assert mmr("sample", "--out", str(root / "sample"), cwd=root, env=env).returncode == 0
    out = mmr("ingest", str(root / "sample" / "manifest.csv"), "--name", "demo", cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    out = mmr("dag-test", "--dataset", "demo", cwd=root, env=env, timeout=1800)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    return env


def settings_for(env: dict[str, str]):  # noqa: ANN201
    from mmretrieval.config import get_settings

    return get_settings(env["MMR_HOME"])


def test_collection_holds_exactly_the_clean_corpus_behind_the_alias(demo: dict[str, str]) -> None:
    import pandas as pd

    from mmretrieval.index import MilvusIndex

    s = settings_for(demo)
    clean = pd.read_parquet(s.stage_dir("clean", "demo") / "manifest.parquet")
    with MilvusIndex(s.milvus_uri) as ix:
        name = ix.resolve_alias("mmr_demo")
        assert name is not None and name.startswith("mmr_demo__m1__d")
        ix.load(name)
        assert ix.count(name) == len(clean) > 0
        props = ix.properties(name)
    assert props["mmr.state"] == "verified"
    assert props["mmr.data_version"] == json.loads((s.stage_dir("clean", "demo") / "report.json").read_text())[
        "data_version"]


def test_mlflow_has_the_run_the_registered_model_and_its_champion(demo: dict[str, str]) -> None:
    from mmretrieval import tracking

    s = settings_for(demo)
    champion = tracking.require_alias(s, "demo", tracking.CHAMPION)
    run = tracking.client(s).get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["data_version"] and run.data.tags["git_sha"]
    assert "test_t2i_recall_at_10" in run.data.metrics
    assert run.data.tags["gate.decision"] == "promote"


def test_sample_captions_find_their_photo_in_the_top_5(demo: dict[str, str]) -> None:
    import csv

    from mmretrieval.client import RetrievalClient

    s = settings_for(demo)
    with open(Path(demo["MMR_HOME"]) / "sample" / "manifest.csv", encoding="utf-8") as f:
        photos = [r for r in csv.DictReader(f) if r["id"].startswith("photo_")]
    hits = total = 0
    with RetrievalClient("demo", settings=s) as client:
        for row in photos:
            for caption in row["text"].split(" ||| "):
                total += 1
                hits += row["id"] in [h.id for h in client.search(text=caption, k=5, modality="image")]
        digit = client.search(text="a handwritten digit seven", k=5)
    rate = hits / total
    print(f"top-5 hit rate of photo captions: {hits}/{total} = {rate:.3f}")
    assert rate >= HIT_RATE_FLOOR
    assert digit[0].label == "7"


def test_search_cli_prints_json_lines_with_the_contract_fields(demo: dict[str, str]) -> None:
    out = mmr("search", "a rocket standing on a launchpad", "--k", "3", "--json", "--dataset", "demo",
              cwd=Path(demo["MMR_HOME"]), env=demo)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 3
    assert {"id", "score", "modality", "path", "text", "label", "collection", "model_version"} <= set(lines[0])
    assert lines[0]["id"] == "photo_rocket"


def test_evaluate_scores_the_champion_on_any_manifest(demo: dict[str, str]) -> None:
    manifest = Path(demo["MMR_HOME"]) / "sample" / "manifest.csv"
    out = mmr("evaluate", "--dataset", "demo", "--manifest", str(manifest), cwd=Path(demo["MMR_HOME"]), env=demo)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)
    assert metrics["model_version"] == "1"
    assert 0.0 <= metrics["t2i_recall@10"] <= 1.0 and metrics["items"] > 100


def test_republishing_unchanged_inputs_creates_nothing(demo: dict[str, str]) -> None:
    out = mmr("publish", "--dataset", "demo", cwd=Path(demo["MMR_HOME"]), env=demo)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["changed"] is False
