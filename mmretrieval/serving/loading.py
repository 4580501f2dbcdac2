"""Models of registered versions, built from what the MLflow door (:mod:`mmretrieval.backends.tracking`)
downloads, and the one process-wide model cache.

The cache is bounded (:data:`CACHE_SIZE` entries, least recently used first out) and holds dual encoders and
re-rankers alike: a long-running service that is asked for many versions keeps only the newest few in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.backends import tracking
from mmretrieval.core.settings import Settings

if TYPE_CHECKING:
    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel

CACHE_SIZE = 4  # models kept per process (a dual encoder of the default towers is ~100 MB in memory)
_cache: OrderedDict[Hashable, Any] = OrderedDict()
_lock = threading.Lock()


def cached(key: Hashable, build: Callable[[], Any]) -> Any:
    """The value cached under ``key``, built by ``build()`` on a miss; evicts the least recently used beyond
    :data:`CACHE_SIZE`. ``None`` results are cached too (a version without a re-ranker stays without one)."""
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = build()
    with _lock:
        _cache[key] = value
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def forget(key: Hashable) -> None:
    """Drop ``key`` from the cache (e.g. a version whose re-ranker was just registered)."""
    with _lock:
        _cache.pop(key, None)


def model_config(settings: Settings, ref: tracking.ModelRef) -> ModelConfig:
    """The :class:`~mmretrieval.models.dual_encoder.ModelConfig` of a registered version, without loading its
    weights or towers."""
    from mmretrieval.models.dual_encoder import ModelConfig

    return ModelConfig.from_json(tracking.model_config(settings, ref))


def load_model(settings: Settings, ref: tracking.ModelRef, device: str = "cpu") -> RetrievalModel:
    """The model of a registered version on ``device`` (loaded once, then from the cache)."""
    return _dual(settings, ref.name, ref.version, device, lambda: tracking.download(settings, ref))


def load_version(settings: Settings, name: str, version: str, device: str = "cpu") -> RetrievalModel:
    """The model of version ``version`` of the registered model ``name`` on ``device``, as :func:`load_model`; a
    version already downloaded (:func:`~mmretrieval.backends.tracking.downloaded`) is loaded without asking the
    registry (and without importing MLflow). Raises :class:`ModelNotFoundError` for a version the registry does
    not know, :class:`TrackingError`."""
    files = tracking.downloaded(settings, name, version)
    if files is None:
        return load_model(settings, tracking.get_version(settings, name, version), device)
    return _dual(settings, name, version, device, lambda: files)


def _dual(settings: Settings, name: str, version: str, device: str, files: Callable[[], Path]) -> RetrievalModel:
    """The cached dual encoder of ``name`` v``version`` on ``device``, loaded from ``files()`` on a miss."""
    from mmretrieval.models.dual_encoder import load

    return cached(("dual", settings.mlflow_uri, name, version, device), lambda: load(files(), device=device))
