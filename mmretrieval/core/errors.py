"""One error tree for the whole library.

Every error is an :class:`MMRError` and also subclasses the builtin it resembles, so callers may catch either::

    MMRError
    ├── ConfigError            (ValueError)    bad params.yaml key/value or environment override
    ├── ManifestError          (ValueError)    a manifest that cannot be read at all (columns, encoding, empty)
    ├── IngestConflict         (ValueError)    a batch that cannot be merged into its dataset (a path holding other
    │                                          bytes for another id, an id twice, nothing to remove)
    ├── ValidationFailed       (ValueError)    hard validation failures: the pipeline stops before training
    │   └── DataChangedError   (ValueError)    bytes differ from those their data version (or validation) recorded
    ├── DatasetNotFoundError   (FileNotFoundError)  unknown dataset name or a stage output that is not there yet
    ├── MediaError             (ValueError)    one media file that cannot be used (query uploads, evaluation)
    ├── CacheError             (ValueError)    a cache size, age or kind that cannot be used (`mmr cache`)
    ├── UnsafePathError        (PermissionError)  a path that would leave its folder (a link) or changed under a copy
    ├── VersioningError        (RuntimeError)  DVC failed
    ├── TrackingError          (RuntimeError)  MLflow run/registry problems
    │   └── ModelNotFoundError (LookupError)   no such registered model, version or alias
    ├── ModelError             (RuntimeError)  a model that cannot be built, loaded or used as asked
    ├── TrainingError          (RuntimeError)  training cannot run or diverged (NaN loss, empty split)
    ├── CalibrationError       (ValueError)    a score calibration refused (too few queries) or unreadable
    ├── IndexStoreError        (RuntimeError)  Milvus problems
    │   └── AliasNotFoundError (LookupError)   no collection behind a serving alias
    ├── PublishError           (RuntimeError)  a new collection failed its checks; the alias was left alone
    ├── PinnedInputChanged     (RuntimeError)  a run's pinned model or data version is no longer what it finds
    └── QueryError             (ValueError)    a bad search request (empty text, k out of range, …)
        ├── FilterError        (ValueError)    a filter expression Milvus cannot parse (HTTP 400, no retry)
        └── SearchModeUnavailable (ValueError) keyword/hybrid search where Milvus has no BM25 function (HTTP 400)

Messages name the bad value and, where there is one, what to do about it.
"""

from __future__ import annotations


class MMRError(Exception):
    """Base of every error raised on purpose by mmretrieval."""


class ConfigError(MMRError, ValueError):
    """A params.yaml key or value, or an environment override, that cannot be used."""


class ManifestError(MMRError, ValueError):
    """A manifest that cannot be read at all (missing columns, not UTF-8, no rows)."""


class IngestConflict(MMRError, ValueError):
    """A batch that cannot be merged into its dataset (``mmr ingest --append/--remove``): nothing was changed."""


class ValidationFailed(MMRError, ValueError):
    """Hard validation failures: the pipeline stops before training."""


class DataChangedError(ValidationFailed):
    """Bytes changed since the data version that recorded them: a raw file rewritten, replaced or deleted after its
    data version or its validation recorded its digest, a clean media file or an embedding shard changed after the
    stage that wrote it recorded its sha256. The stage stops rather than mix bytes of two versions; the message names
    the file, the expected and found digests and what to run."""

    @classmethod
    def of(cls, path: object, expected: str, found: str | None, data_version: str, when: str) -> DataChangedError:
        """The one-line error for the file ``path`` whose sha256 (or md5) should be ``expected`` and is ``found``
        (``None``: the file is gone), ``when`` naming the record (e.g. "validation")."""
        now = f"found {found}" if found else "the file is gone"
        return cls(f"{path} changed after {when} of data version {data_version[:12]}: expected {expected}, {now}; "
                   "run `mmr ingest` again (then `mmr validate`) so the change gets a data version")


class DatasetNotFoundError(MMRError, FileNotFoundError):
    """An unknown dataset or a stage output that does not exist yet."""


class MediaError(MMRError, ValueError):
    """One media file that cannot be decoded or used."""


class CacheError(MMRError, ValueError):
    """A size, age or kind of the per-item caches that cannot be used (``mmr cache``, ``cache.max_size``)."""


class UnsafePathError(MMRError, PermissionError):
    """A path that would be followed out of its folder (a symbolic link, a folder swapped for one between a check
    and a copy) or that is not a regular file: refused, never followed."""


class VersioningError(MMRError, RuntimeError):
    """A DVC command failed."""


class StoreError(MMRError, RuntimeError):
    """The shared data store (``MMR_DATA_URL``) failed, or holds a committed output that cannot be used (an object
    its commit record lists is missing, or its bytes differ from the recorded size and sha256)."""


class LockError(MMRError, RuntimeError):
    """The shared lock coordinator (``MMR_LOCK_URL``) cannot be reached or used."""


class TrackingError(MMRError, RuntimeError):
    """An MLflow run or registry operation failed."""


class ModelNotFoundError(TrackingError, LookupError):
    """No such registered model, version or alias."""


class ModelError(MMRError, RuntimeError):
    """A model that cannot be built, loaded or used as asked."""


class TrainingError(MMRError, RuntimeError):
    """Training cannot run (empty split) or diverged (NaN loss)."""


class CalibrationError(MMRError, ValueError):
    """A score calibration that cannot be fitted (too few test queries, labels all alike) or read back."""


class IndexStoreError(MMRError, RuntimeError):
    """A Milvus operation failed."""


class AliasNotFoundError(IndexStoreError, LookupError):
    """No collection behind a serving alias."""


class PublishError(MMRError, RuntimeError):
    """A new collection failed its checks; the serving alias was left alone."""


class PinnedInputChanged(MMRError, RuntimeError):
    """An input a run pinned in its first task (model version, data version) changed under it: the run stops
    rather than mix two versions."""


class QueryError(MMRError, ValueError):
    """A bad search request (empty text, k out of range, unknown modality, missing tower)."""


class FilterError(QueryError):
    """A filter expression Milvus cannot parse (unknown field, syntax): the user's error, never retried."""


class SearchModeUnavailable(QueryError):
    """A search mode the serving collection cannot answer: keyword or hybrid search on a Milvus without the BM25
    function (a 2.3 server), or on a collection published without a keyword field. The message names the server
    version."""


__all__ = [
    "AliasNotFoundError",
    "ConfigError",
    "DataChangedError",
    "DatasetNotFoundError",
    "FilterError",
    "IndexStoreError",
    "IngestConflict",
    "MMRError",
    "ManifestError",
    "MediaError",
    "ModelError",
    "ModelNotFoundError",
    "PinnedInputChanged",
    "PublishError",
    "QueryError",
    "SearchModeUnavailable",
    "TrackingError",
    "TrainingError",
    "UnsafePathError",
    "ValidationFailed",
    "VersioningError",
]
