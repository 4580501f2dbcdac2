"""Re-ranking end to end on the tiny dataset with the pretrained CNN tower: the rerank stage trains, evaluates and
gates the re-ranker on the challenger's own MLflow run; embed writes the region store; publish records and checks
it; the client and the CLI re-rank (with both scores on each hit) only when the gate passed, and ``rerank=0``
turns it off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.backends import tracking
from mmretrieval.cli import main
from mmretrieval.core.errors import PublishError, QueryError
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_stage
from mmretrieval.serving import loading
from tests.helpers.workspace import DEFAULT_TOWER

pytestmark = pytest.mark.integration

RERANK = {"enabled": True, "negatives": 3, "folds": 2, "epochs": 2, "batch_size": 8, "bootstrap": 200, "depth": 4,
          "min_test_items": 2}  # the tiny test split has a handful of items: let the gate decide on them


def set_params(ws: Path, rerank: dict[str, object]) -> None:
    base = (ws / "params.yaml").read_text(encoding="utf-8").split("\noverrides:")[0]
    over = {"tiny": {"model": DEFAULT_TOWER, "train": {"epochs": 2}, "rerank": RERANK | rerank}}
    (ws / "params.yaml").write_text(base + f"\noverrides: {json.dumps(over)}\n", encoding="utf-8")


def test_reranker_is_gated_versioned_stored_and_used_by_client_and_cli(
        prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmretrieval.serving.client import RetrievalClient
    from mmretrieval.serving.reranking import GATE_TAG, serving_reranker

    set_params(prepared, {"min_gain": 1.0})  # no re-ranker can gain 100 points: the gate must refuse
    run_stage("train", "tiny")
    run_stage("evaluate", "tiny")
    refused = run_stage("rerank", "tiny")
    settings = get_settings(prepared)
    ref = tracking.require_alias(settings, "tiny", tracking.CHALLENGER)
    assert refused["passed"] is False and refused["model_version"] == ref.version
    report = json.loads((prepared / "data/reports/tiny/rerank.json").read_text())
    for key in ("dual_t2i_recall@1", "rerank_t2i_recall@1", "dual_i2t_hit_rate@10", "rerank_i2t_mrr"):
        assert key in report["metrics"]
    assert set(report["latency"]) == {"dual", "rerank_extra", "dual+rerank"}
    mv = tracking.client(settings).get_model_version(ref.name, ref.version)
    assert mv.tags[GATE_TAG] == "refuse" and "does not clear" in mv.tags["reranker.reasons"]
    log = [json.loads(line) for line in (prepared / "var/promotions/tiny.jsonl").read_text().splitlines()]
    assert log[-1]["action"] == "reranker-refuse" and log[-1]["model_version"] == ref.version

    set_params(prepared, {"min_gain": -1.0})  # any re-ranker passes now: the plumbing is what is tested here
    assert run_stage("rerank", "tiny")["passed"] is True
    assert serving_reranker(settings, ref) is not None
    run_stage("promote", "tiny")
    embedded = run_stage("embed", "tiny")
    images = embedded["modalities"]["image"]
    assert embedded["regions"]["rows"] == images
    assert embedded["regions"]["bytes_per_item"] == 3 * 3 * 384 * 2  # 3 x 3 concept regions of 384 fp16
    # one decode and one backbone pass per image give both: the vector is the one the model encodes, the regions
    # the ones the re-ranker projects from the image's own feature map
    import pandas as pd
    import torch

    from mmretrieval.backends.regions import RegionStore
    from mmretrieval.media.image import open_image
    from mmretrieval.training.rerank_inputs import feature_maps

    shard = pd.read_parquet(Path(embedded["path"]) / embedded["shards"][0])
    row = shard[shard["modality"] == "image"].iloc[0]
    clean = pd.read_parquet(prepared / "data/clean/tiny/manifest.parquet").set_index("id")
    model = loading.load_model(settings, ref)
    photo = open_image(prepared / "data/clean/tiny" / clean.loc[row["id"], "media"])
    assert np.asarray(row["vector"]) == pytest.approx(model.encode_images([photo])[0], abs=1e-5)
    net = serving_reranker(settings, ref)
    with torch.no_grad():
        expected = net.project_regions(feature_maps(model, [photo]).float())[0].numpy()
    stored = RegionStore(Path(embedded["regions"]["path"])).lookup([row["id"]])[0].astype(np.float32)
    assert stored == pytest.approx(expected, abs=2e-3)  # float16 in the store
    published = run_stage("publish", "tiny")
    assert published["checks"]["regions"]["items"] == images
    _evaluate_scores_what_serving_returns(prepared, settings, ref, clean, capsys)

    with RetrievalClient("tiny", settings=settings) as client:
        default = client.search("a red square", k=2)  # image-only collection, gated re-ranker: on by default
        assert len(default) == 2 and all(h.dual_score is not None for h in default)
        assert [h.score for h in default] == sorted((h.score for h in default), reverse=True)
        off = client.search("a red square", k=2, rerank=0)
        assert all(h.dual_score is None for h in off)
        assert {h.id for h in client.search("a red square", k=2, rerank=3)} <= {h.id for h in
                                                                              client.search("a red square", k=3,
                                                                                            rerank=0)}
        with pytest.raises(QueryError, match="between k"):
            client.search("a red square", k=5, rerank=2)
        with pytest.raises(QueryError, match="modality 'image'"):
            client.search("a red square", k=2, rerank=3, modality="text")

    capsys.readouterr()
    assert main(["search", "a red square", "--dataset", "tiny", "--k", "2", "--rerank", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 2 and all(h["dual_score"] is not None for h in hits)
    assert main(["search", "a red square", "--dataset", "tiny", "--k", "2", "--rerank", "0", "--json"]) == 0
    assert all(json.loads(line)["dual_score"] is None for line in capsys.readouterr().out.splitlines())

    from fastapi.testclient import TestClient

    from mmretrieval.serving.http import ServiceConfig, create_app

    app = create_app("tiny", settings, ServiceConfig(trusted_hosts=("127.0.0.1",)))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as http:
        on = http.post("/search", json={"text": "a red square", "k": 2, "rerank": 3})
        assert on.status_code == 200 and all(h["dual_score"] is not None for h in on.json())
        off = http.post("/search", json={"text": "a red square", "k": 2, "rerank": 0})
        assert off.status_code == 200 and all(h["dual_score"] is None for h in off.json())
        too_shallow = http.post("/search", json={"text": "a red square", "k": 5, "rerank": 2})
        assert too_shallow.status_code == 400 and "between k" in too_shallow.json()["detail"]


def _evaluate_scores_what_serving_returns(ws: Path, settings: object, ref: tracking.ModelRef, clean: object,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``mmr evaluate --manifest`` (the clean items, as the collection holds them) scores the champion with and
    without its gated re-ranker side by side, and the re-ranked mode ranks exactly as a default search returns."""
    from mmretrieval.evaluation.evaluator import RetrievalEvaluator
    from mmretrieval.serving.client import RetrievalClient
    from mmretrieval.serving.modes import rankers
    from mmretrieval.stages.evaluate import evaluate_manifest, gallery_of, mode_context

    manifest = ws / "data/clean/tiny/as_manifest.csv"  # media relative to the clean folder
    frame = clean.reset_index()[["id", "modality", "media", "text", "label"]].rename(columns={"media": "path"})
    frame.to_csv(manifest, index=False)
    scored = evaluate_manifest("tiny", manifest, settings)
    assert scored["modes"] == ["vector", "reranked"] and scored["model_version"] == ref.version
    assert {"vector/t2i_recall@1", "vector/i2t_mrr", "reranked/t2i_recall@1", "reranked/t2i_mrr",
            "items"} <= set(scored)
    assert not any(k.startswith("reranked/i2t_") for k in scored)  # serving re-ranks text queries only
    assert scored["reranked/t2i_recall@10_chance"] == scored["vector/t2i_recall@10_chance"]

    evaluator = RetrievalEvaluator(frame, manifest.parent, media_column="path", primary_metric="t2i_recall@10")
    model = loading.load_model(settings, ref)
    ctx = mode_context(settings, "tiny", ref, model, gallery_of(evaluator.decode(model, "image"), frame))
    ranked = rankers(ctx)["reranked"](["a red square"])[0]
    k = min(10, len(ranked))
    with RetrievalClient("tiny", settings=settings) as client:
        served = client.search("a red square", k=k)  # re-ranked by default, depth max(k, rerank.depth)
    assert [h.id for h in served] == ranked[:k]

    queries = ws / "queries.csv"
    red = [i for i in frame["id"] if i.startswith("red")]
    queries.write_text(f"query,relevant\na red square,{' ||| '.join(red)}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "tiny", "--manifest", str(manifest), "--queries", str(queries)]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["queries"] == 1 and own["modes"] == ["vector", "reranked"]
    first = next(rank for rank, i in enumerate(ranked, 1) if i in red)
    assert own["reranked/t2i_mrr"] == pytest.approx(1 / first, abs=1e-4)

    run_stage("evaluate", "tiny")  # the champion (and challenger) now serve a gated re-ranker: both modes reported
    report = json.loads((ws / "data/reports/tiny/evaluate.json").read_text())
    modes = report["champion"]["modes"]
    assert {"reranked/t2i_recall@1", "reranked/t2i_recall@1_chance"} <= set(modes)
    assert modes["reranked/t2i_recall@1_chance"] == report["champion"]["metrics"]["t2i_recall@1_chance"]
    assert f"champion (v{ref.version}) reranked" in (ws / "data/reports/tiny/evaluate.html").read_text()


def test_publish_refuses_a_region_store_that_lacks_an_image(tmp_path: Path) -> None:
    import numpy as np

    from mmretrieval.backends.regions import finish, write_shard
    from mmretrieval.stages.publish import check_regions

    write_shard(tmp_path, 0, ["a"], np.zeros((1, 2, 3)))
    finish(tmp_path, 1, {})
    assert check_regions(tmp_path, ["a"])["items"] == 1
    with pytest.raises(PublishError, match="'b'"):
        check_regions(tmp_path, ["a", "b"])


def test_distilled_student_is_registered_as_a_challenger_of_its_teacher(prepared: Path) -> None:
    from mmretrieval.core.errors import ModelError
    from mmretrieval.stages.distill import run as distill

    set_params(prepared, {"min_gain": 1.0})
    run_stage("train", "tiny")
    run_stage("rerank", "tiny")  # refused: nothing to distil from
    with pytest.raises(ModelError, match="no re-ranker that passed its gate"):
        distill("tiny")
    set_params(prepared, {"min_gain": -1.0})
    run_stage("rerank", "tiny")
    settings = get_settings(prepared)
    teacher = tracking.require_alias(settings, "tiny", tracking.CHALLENGER)
    result = distill("tiny")
    student = tracking.require_alias(settings, "tiny", tracking.CHALLENGER)
    assert result["teacher_version"] == teacher.version and student.version == result["model_version"]
    assert int(student.version) == int(teacher.version) + 1
    mv = tracking.client(settings).get_model_version(student.name, student.version)
    assert mv.tags["distilled_from"] == teacher.version
    # a concept teacher makes a concept student: the teacher's heads plus its vocabulary and a fitted mixing weight
    loaded = loading.load_model(settings, student, "cpu")
    assert loaded.config.image_concepts == 1000 and result["concept_mix"] == round(float(loaded.net.concept_mix), 4)
    before = loading.load_model(settings, teacher, "cpu").encode_texts(["a red square"])
    assert np.allclose(loaded.encode_texts(["a red square"]), before, atol=1e-5)  # the text side is the teacher's
    assert run_stage("evaluate", "tiny")["challenger"] == student.version  # the same gate as every model


def test_a_reranker_that_passes_after_publishing_is_embedded_and_attached_on_the_next_run(prepared: Path) -> None:
    from mmretrieval.serving.client import RetrievalClient

    set_params(prepared, {"min_gain": 1.0})  # refused: served without re-ranking
    for verb in ("train", "evaluate", "rerank", "promote", "embed"):
        run_stage(verb, "tiny")
    first = run_stage("publish", "tiny")
    assert "regions" not in first["checks"]
    with RetrievalClient("tiny", settings=get_settings(prepared)) as client:
        assert all(h.dual_score is None for h in client.search("a red square", k=2))  # not re-ranked by default
        with pytest.raises(QueryError, match="refused by its gate"):  # and asking for it says why it cannot be
            client.search("a red square", k=2, rerank=3)
        info = client.info()["rerank"]
        assert info["available"] is False and "refused by its gate" in info["why"]
    set_params(prepared, {"min_gain": -1.0})  # the same version's re-ranker passes now
    assert run_stage("rerank", "tiny")["passed"] is True
    embedded = run_stage("embed", "tiny")
    assert not embedded.get("skipped") and embedded["regions"]["rows"] == embedded["modalities"]["image"]
    again = run_stage("publish", "tiny")
    assert again["collection"] == first["collection"] and again["checks"]["regions"]["items"] > 0
    with RetrievalClient("tiny", settings=get_settings(prepared)) as client:
        assert all(h.dual_score is not None for h in client.search("a red square", k=2))  # re-ranked by default
        assert client.info()["rerank"] == {"available": True, "modality": "image", "depth": RERANK["depth"]}
    # the vectors were cached by the first embedding, the regions were not: every image was decoded again, and
    # now both are reused, the region store rebuilt bit for bit without decoding an image
    rows = embedded["rows"]
    assert embedded["cache"] == {"reused": 0, "computed": rows}
    store = Path(embedded["regions"]["path"])
    before = {f.name: f.read_bytes() for f in sorted(store.glob("*-*.*"))}
    shutil.rmtree(embedded["path"])
    rebuilt = run_stage("embed", "tiny")
    assert rebuilt["cache"] == {"reused": rows, "computed": 0} and rebuilt["regions"]["rows"] == rows
    assert {f.name: f.read_bytes() for f in sorted(store.glob("*-*.*"))} == before


def test_auto_rerank_skips_a_model_without_a_feature_map_and_says_why_while_true_refuses(prepared: Path) -> None:
    from mmretrieval.core.errors import ConfigError

    run_stage("train", "tiny")  # the test workspace's resnet18 trained from scratch: no pretrained feature map
    skipped = run_stage("rerank", "tiny")
    assert "resnet18" in skipped["skipped"] and "pretrained CNN" in skipped["skipped"]
    assert not (prepared / "data/reports/tiny/rerank.json").exists()
    base = (prepared / "params.yaml").read_text(encoding="utf-8").split("\noverrides:")[0]
    (prepared / "params.yaml").write_text(base + '\noverrides: {"tiny": {"rerank": {"enabled": true}}}\n')
    with pytest.raises(ConfigError, match="rerank.enabled is true but the image backbone 'resnet18'"):
        run_stage("rerank", "tiny")
