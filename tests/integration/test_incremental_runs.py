"""The chain on an appended data version with ``train.when: grown``: a few new items train no new model (the run
says why), the champion embeds them and a rebuilt collection serves them under the new data version; ``mmr train
--force`` still trains one. Real DVC, MLflow and Milvus Lite, CPU (about a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_all, run_stage
from mmretrieval.serving.client import RetrievalClient
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import tiny_dataset, write_manifest, write_png
from tests.helpers.workspace import FAST_PARAMS, enter_workspace, make_workspace

pytestmark = pytest.mark.integration
GROWN = FAST_PARAMS + "overrides: {tiny: {train: {when: grown, grown_by: 0.5}}}\n"


def test_a_small_append_is_served_by_the_champion_without_training(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = enter_workspace(monkeypatch, make_workspace(tmp_path / "ws", GROWN))
    ingest(tiny_dataset(tmp_path / "src"), "tiny")
    first = run_all("tiny")
    assert first["train"]["skipped"] is False and first["train"]["reason"] == "no champion yet"
    assert first["promote"]["promoted"] is True
    settings = get_settings(root)
    tags, params = tracking.run_data(settings, first["train"]["run_id"])  # what the next run compares with
    assert params["clean_items"] == "16" and tags["data_version"] == first["clean"]["data_version"]

    batch = tmp_path / "batch"
    rows = []
    for k in range(3):  # 3 new of 16 items: 19% < grown_by 50%
        write_png(batch / f"images/purple{k}.png", size=(36 + k, 36), color=(150, 40 + 5 * k, 200))
        rows.append({"id": f"purple{k}", "modality": "image", "path": f"images/purple{k}.png", "split": "train",
                     "text": "a purple square ||| something purple", "label": "purple"})
    appended = ingest(write_manifest(batch, rows), "tiny", append=True)
    assert appended["added"] == 3
    second = run_all("tiny")
    train = second["train"]
    assert train["skipped"] is True and train["model_version"] == "1"
    assert "3 new and 0 changed item(s)" in train["reason"] and "< train.grown_by 50.0%" in train["reason"]
    assert train["champion_data_version"] == first["clean"]["data_version"] != train["data_version"]
    for verb in ("evaluate", "rerank", "promote"):
        assert second[verb] == {"dataset": "tiny", "skipped": True, "reason": train["reason"], "model_version": "1"}
    assert tracking.require_alias(settings, "tiny", tracking.CHAMPION).version == "1"
    new_version = second["clean"]["data_version"]
    assert second["publish"]["changed"] is True and second["publish"]["data_version"] == new_version
    assert second["embed"]["rows"] == 19 and second["embed"]["model_version"] == "1"
    with RetrievalClient("tiny", settings=settings) as client:
        hits = client.search(text="a purple square", k=50)
    assert {h.id for h in hits} >= {"purple0", "purple1", "purple2"} and len(hits) == 19
    assert {(h.model_version, h.data_version) for h in hits} == {("1", new_version)}

    forced = run_stage("train", "tiny", force=True)  # mmr train --force
    assert forced["skipped"] is False and forced["model_version"] == "2" and "forced" in forced["reason"]
