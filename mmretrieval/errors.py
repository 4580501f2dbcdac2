"""One error tree for the whole library.

Every error is an :class:`MMRError` and also subclasses the builtin it resembles, so callers may catch either::

    MMRError
    ├── ConfigError            (ValueError)    bad params.yaml key/value or environment override
    ├── ManifestError          (ValueError)    a manifest that cannot be read at all (columns, encoding, empty)
    ├── ValidationFailed       (ValueError)    hard validation failures: the pipeline stops before training
    ├── DatasetNotFoundError   (FileNotFoundError)  unknown dataset name or a stage output that is not there yet
    ├── MediaError             (ValueError)    one media file that cannot be used (query uploads, evaluation)
    ├── VersioningError        (RuntimeError)  DVC failed
    ├── TrackingError          (RuntimeError)  MLflow run/registry problems
    │   └── ModelNotFoundError (LookupError)   no such registered model, version or alias
    ├── ModelError             (RuntimeError)  a model that cannot be built, loaded or used as asked
    ├── TrainingError          (RuntimeError)  training cannot run or diverged (NaN loss, empty split)
    ├── IndexStoreError        (RuntimeError)  Milvus problems
    │   └── AliasNotFoundError (LookupError)   no collection behind a serving alias
    ├── PublishError           (RuntimeError)  a new collection failed its checks; the alias was left alone
    └── QueryError             (ValueError)    a bad search request (empty text, k out of range, …)

Messages name the bad value and, where there is one, what to do about it.
"""

from __future__ import annotations


class MMRError(Exception):
    """Base of every error raised on purpose by mmretrieval."""


class ConfigError(MMRError, ValueError):
    pass


class ManifestError(MMRError, ValueError):
    pass


class ValidationFailed(MMRError, ValueError):
    pass


class DatasetNotFoundError(MMRError, FileNotFoundError):
    pass


class MediaError(MMRError, ValueError):
    pass


class VersioningError(MMRError, RuntimeError):
    pass


class TrackingError(MMRError, RuntimeError):
    pass


class ModelNotFoundError(TrackingError, LookupError):
    pass


class ModelError(MMRError, RuntimeError):
    pass


class TrainingError(MMRError, RuntimeError):
    pass


class IndexStoreError(MMRError, RuntimeError):
    pass


class AliasNotFoundError(IndexStoreError, LookupError):
    pass


class PublishError(MMRError, RuntimeError):
    pass


class QueryError(MMRError, ValueError):
    pass


__all__ = [
    "AliasNotFoundError",
    "ConfigError",
    "DatasetNotFoundError",
    "IndexStoreError",
    "MMRError",
    "ManifestError",
    "MediaError",
    "ModelError",
    "ModelNotFoundError",
    "PublishError",
    "QueryError",
    "TrackingError",
    "TrainingError",
    "ValidationFailed",
    "VersioningError",
]
