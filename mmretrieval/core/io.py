"""Small file helpers shared by the stages: atomic output folders (one folder swap), JSON, parquet."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.errors import DatasetNotFoundError

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.core.layout import Layout


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch folder that replaces ``target`` (:func:`swap_dir`) only if the block finishes without an
    exception.

    A crash or retry never leaves half a result in ``target``: the old content stays until the rename.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_dir(tmp, target)


def swap_dir(src: Path, target: Path) -> None:
    """Put the folder ``src`` in the place of ``target`` (same file system) by renames: the old ``target`` is moved
    aside as ``.<name>.old-<pid>`` and removed after, so a reader finds the old folder or the new one, never a mix
    (for an instant, neither). The leftovers of killed writers of ``target`` are swept first (:func:`_sweep_dead`).
    """
    _sweep_dead(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    src.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _sweep_dead(target: Path) -> None:
    """Remove the scratch (``.tmp-<pid>``) and replaced (``.old-<pid>``) folders of ``target`` left by writers that
    were killed (their process is gone), so a SIGKILL mid-write does not leak a copy of the data for ever."""
    for leftover in target.parent.glob(f".{target.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if not kind.endswith((".tmp", ".old")) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except (PermissionError, OverflowError):
            continue  # alive under another user, or not a pid at all: leave it


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digests(path: Path, algorithms: tuple[str, ...] = ("md5", "sha256")) -> dict[str, str]:
    """Hex digests of a file's bytes for each of ``algorithms`` (hashlib names), from one read in 1 MiB chunks.
    Raises ``OSError`` (``FileNotFoundError`` for a missing file)."""
    import hashlib

    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically: a temp file of this writer's own (parallel writers of the same file never
    share one), then a rename; readers see the old or the new file, never half of one."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DatasetNotFoundError(f"{what} not found at {path}: run the stage that writes it first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_parquet(path: Path, what: str) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise DatasetNotFoundError(f"{what} not found at {path}: run the stage that writes it first")
    return pd.read_parquet(path)


def read_table(path: Path, what: str, columns: Sequence[str]) -> Any:
    """Only ``columns`` of a parquet file, as an Arrow table (columnar: no Python object per cell); raises
    :class:`DatasetNotFoundError` when the file is missing."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DatasetNotFoundError(f"{what} not found at {path}: run the stage that writes it first")
    return pq.read_table(path, columns=list(columns))


def append_promotion(layout: Layout, entry: dict[str, Any]) -> dict[str, Any]:
    """Append one gate decision or alias move to the dataset's promotions log (``var/promotions/<ds>.jsonl``, one
    JSON object a line; MLflow keeps no alias history): ``entry`` after the ``time`` (UTC, ISO 8601 seconds) and the
    ``dataset``. Returns the object written."""
    import datetime as dt

    line = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "dataset": layout.dataset, **entry}
    path = layout.promotions_log
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    return line
