"""Byte checks and item digests: a stage works on exactly the bytes its data version recorded (issue 25).

The clean manifest records each clean media file's SHA-256 in :data:`MEDIA_SHA256`. A stage that reads such a file
(train, embed) checks the bytes against it first (:func:`verify_file`) and stops with one
:class:`~mmretrieval.core.errors.DataChangedError` naming the file when they differ or the file is gone. The same
digests key the per-item caches (:mod:`mmretrieval.core.cache`): :func:`item_digest` is the digest of what decides an
item's content (the media file's bytes, or a text item's normalised text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmretrieval.core.errors import DataChangedError
from mmretrieval.core.io import sha256_file

MEDIA_SHA256 = "media_sha256"  # clean manifest column: hex sha256 of the clean media file ("" or absent: unknown)


def recorded(frame: Any) -> list[str]:
    """The recorded :data:`MEDIA_SHA256` of each row of a (clean) manifest frame; ``""`` for rows without one and
    for every row when the column is absent."""
    if MEDIA_SHA256 not in frame.columns:
        return [""] * len(frame)
    return [v if isinstance(v, str) else "" for v in frame[MEDIA_SHA256].tolist()]


def verify_file(path: Path, expected: str = "") -> str:
    """Hex SHA-256 of ``path``'s bytes, checked against ``expected`` (the recorded digest; ``""``: nothing recorded,
    nothing to check). Raises :class:`DataChangedError` naming the file when it is gone or its bytes differ."""
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise DataChangedError(f"{path} is gone since the clean data version recorded it: run clean again") from None
    if expected and actual != expected:
        raise DataChangedError(f"{path} changed since the clean data version recorded it (sha256 {actual[:12]}, "
                               f"recorded {expected[:12]}): run clean again") from None
    return actual


def verify_files(paths: Sequence[Path], expected: Sequence[str], desc: str = "byte check") -> int:
    """:func:`verify_file` for each path with a recorded digest; returns how many were checked. Raises
    :class:`DataChangedError` at the first file that changed."""
    from mmretrieval.core.progress import progress

    pairs = [(p, e) for p, e in zip(paths, expected, strict=True) if e]
    for path, digest in progress(pairs, desc, unit="files"):
        verify_file(path, digest)
    return len(pairs)


def text_digest(text: str) -> str:
    """Hex SHA-256 of a text item's (normalised) text, as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_digest(modality: str, digest: str) -> str:
    """The digest an item cache keys on: the modality the bytes are read as, and their digest."""
    return f"{modality}:{digest}"
