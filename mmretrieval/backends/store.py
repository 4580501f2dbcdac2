"""The shared data store (``MMR_DATA_URL``): stage outputs handed from one worker to the next through a bucket.

Every worker keeps its own working copy of the layout under its ``MMR_HOME`` (a cache); the store holds what was
*committed*. A unit is one stage output, named by its path under ``data/`` (``clean/<ds>``, ``embeddings/<ds>/v3``,
``embeddings/<ds>/v3.partial/shard-00002``) or a file of ``var/`` (``var/promotions/<ds>.jsonl``). Its keys::

    <prefix>/<unit>/objects/<uuid>/<relative path>   the files of one upload (a version)
    <prefix>/<unit>/COMMITTED.json                   the commit record, written last: {"commit": uuid, "kind",
                                                     "files": {path: {"size", "sha256"}}, "previous", "history",
                                                     "time"}

:meth:`Store.push` uploads every file under a fresh uuid, then writes the commit record (one PUT, atomic on S3), then
collects garbage: versions older than the previous commit go (a reader mid-download of the previous one keeps its
files), and uploads never committed (a writer killed before its commit) go once they are an hour old.
:meth:`Store.pull` follows only the commit record: an upload without one is invisible, a commit whose objects are
missing or whose bytes differ is refused (:class:`StoreError` naming the file), and the download lands in place by a
folder swap (:func:`mmretrieval.core.io.atomic_dir`) or a file rename, so a reader never sees half an output. A marker
under ``var/store/`` records the commit a local copy holds: pulling it again downloads nothing.

Any fsspec URL works (``file://`` too); for ``s3://`` the endpoint and credentials come from the standard variables
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, as for every AWS client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.errors import StoreError
from mmretrieval.core.io import atomic_dir, sha256_file, write_json

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from mmretrieval.core.settings import Settings

log = logging.getLogger(__name__)
COMMIT = "COMMITTED.json"
OBJECTS = "objects"
HISTORY = 20  # past commit ids a record remembers (so GC finds their objects)
ORPHAN_GRACE_S = 3600.0  # an upload never committed is deleted once this old (its writer is surely gone)


def open_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec file system of ``url`` and the root path inside it (``s3://b/p`` -> (S3FileSystem, ``b/p``))."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {"client_kwargs": {"endpoint_url": endpoint} if endpoint else {}, "skip_instance_cache": True,
                   "use_listings_cache": False}  # other workers commit meanwhile: never list from a cache
    elif protocol == "file":
        options = {"auto_mkdir": True}
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:
        raise StoreError(f"MMR_DATA_URL={url!r} cannot be opened: {e}") from e
    return fs, root.rstrip("/")


class Store:
    """One shared data store; ``Store(url)``, or :func:`from_settings` (None without ``MMR_DATA_URL``)."""

    def __init__(self, url: str, markers: Path | None = None) -> None:
        self.url = url
        self.fs, self.root = open_fs(url)
        self.markers = markers  # var/store/: the commit each local copy holds (None: no markers)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # --- reading -------------------------------------------------------------------------------------------------
    def key(self, unit: str) -> str:
        if not unit or unit.startswith("/") or ".." in unit.split("/"):
            raise StoreError(f"bad store unit {unit!r}: a relative path without '..'")
        return f"{self.root}/{unit}"

    def commit(self, unit: str) -> dict[str, Any] | None:
        """The commit record of ``unit``, or None when nothing was committed. Raises :class:`StoreError` when the
        store cannot be read."""
        path = f"{self.key(unit)}/{COMMIT}"
        try:
            return dict(json.loads(self.fs.cat_file(path)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read the commit record {self.url}/{unit}/{COMMIT}: {e}") from e

    def units(self, prefix: str) -> list[str]:
        """The committed units under ``prefix`` (a unit or a folder of units; "" for all), sorted."""
        base = self.key(prefix) if prefix else self.root
        try:
            found = self.fs.glob(f"{base}/**/{COMMIT}") + self.fs.glob(f"{base}/{COMMIT}")
        except FileNotFoundError:
            return []
        units = {p.removeprefix(self.root + "/").removesuffix("/" + COMMIT) for p in found}
        return sorted(u for u in units if f"/{OBJECTS}/" not in f"/{u}/")

    # --- writing -------------------------------------------------------------------------------------------------
    def push(self, local: Path, unit: str) -> dict[str, Any]:
        """Upload the folder or file ``local`` as ``unit``: every file under a fresh version, then the commit record,
        then garbage collection (:meth:`gc`). Returns the commit record. Raises :class:`StoreError` (nothing of a
        failed push is ever visible to readers) or :class:`FileNotFoundError` when ``local`` does not exist."""
        if not local.exists():
            raise FileNotFoundError(f"cannot push {local} as {unit!r}: it does not exist")
        kind = "dir" if local.is_dir() else "file"
        files = sorted(p for p in local.rglob("*") if p.is_file()) if kind == "dir" else [local]
        rels = [p.relative_to(local).as_posix() if kind == "dir" else local.name for p in files]
        version = uuid.uuid4().hex
        base = f"{self.key(unit)}/{OBJECTS}/{version}"
        started = time.monotonic()
        entries = {rel: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                   for rel, p in zip(rels, files, strict=True)}
        previous = self.commit(unit)
        if previous is not None and previous.get("kind") == kind and previous.get("files") == entries:
            self._mark(unit, previous["commit"])  # the same bytes are committed already: nothing to upload
            log.info("store: %s unchanged (%s)", unit, previous["commit"][:8])
            return previous
        try:
            if files:
                self.fs.put([str(p) for p in files], [f"{base}/{rel}" for rel in rels])
            record = {"commit": version, "kind": kind, "files": entries,
                      "previous": previous["commit"] if previous else None,
                      "history": ([previous["commit"], *previous.get("history", [])] if previous else [])[:HISTORY],
                      "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            self._write_commit(unit, record)
        except OSError as e:
            raise StoreError(f"push of {local} to {self.url}/{unit} failed: {e}") from e
        self._mark(unit, version)
        log.info("store: pushed %s (%d file(s), %.1f MB) as %s@%s in %.1fs", unit, len(files),
                 sum(e["size"] for e in entries.values()) / 1e6, unit, version[:8], time.monotonic() - started)
        self.gc(unit, record)
        return record

    def _write_commit(self, unit: str, record: dict[str, Any]) -> None:
        self.fs.pipe_file(f"{self.key(unit)}/{COMMIT}", json.dumps(record, indent=1).encode())

    def gc(self, unit: str, record: dict[str, Any] | None = None, grace_s: float = ORPHAN_GRACE_S) -> list[str]:
        """Delete the versions of ``unit`` other than the current and the previous commit: those of older commits at
        once, uploads never committed once ``grace_s`` old (a writer may still be uploading). Returns them."""
        record = record or self.commit(unit)
        if record is None:
            return []
        keep = {record["commit"], record.get("previous")}
        committed_before = set(record.get("history", []))
        deleted = []
        try:
            versions = [p.rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.key(unit)}/{OBJECTS}", detail=False)]
        except FileNotFoundError:
            return []
        for version in sorted(set(versions) - keep):
            folder = f"{self.key(unit)}/{OBJECTS}/{version}"
            if version in committed_before or self._age_s(folder) > grace_s:
                self.fs.rm(folder, recursive=True)
                deleted.append(version)
        if deleted:
            log.info("store: %s: deleted %d old version(s)", unit, len(deleted))
        return deleted

    def _age_s(self, folder: str) -> float:
        """Seconds since the newest object under ``folder`` was written (0 when unknown: kept)."""
        newest = 0.0
        for info in self.fs.find(folder, detail=True).values():
            modified = info.get("LastModified") or info.get("mtime") or info.get("created")
            if isinstance(modified, dt.datetime):
                modified = modified.timestamp()
            if isinstance(modified, (int, float)):
                newest = max(newest, float(modified))
        return time.time() - newest if newest else 0.0

    def delete(self, unit: str) -> None:
        """Remove ``unit`` (its commit record first, so readers stop seeing it, then its objects)."""
        try:
            self.fs.rm(f"{self.key(unit)}/{COMMIT}")
        except FileNotFoundError:
            pass
        try:
            self.fs.rm(self.key(unit), recursive=True)
        except FileNotFoundError:
            pass
        self._mark(unit, None)

    # --- downloading ---------------------------------------------------------------------------------------------
    def pull(self, unit: str, local: Path) -> dict[str, Any] | None:
        """Make ``local`` the committed version of ``unit`` (skipped when the marker says it already is). Returns
        the commit record, or None when nothing is committed (``local`` left alone). Raises :class:`StoreError` for
        a commit that cannot be used (an object missing, a size or sha256 that differs); ``local`` is then
        unchanged."""
        with self._local_lock(unit):  # two tasks of one worker pulling the same unit: one downloads
            record = self.commit(unit)
            if record is None:
                return None
            if self.marked(unit) != record["commit"] or not local.exists():
                self._replace(unit, record, local)
            return record

    @contextlib.contextmanager
    def _local_lock(self, unit: str) -> Iterator[None]:
        if self.markers is None:
            yield
            return
        from filelock import FileLock

        path = self.markers / f"{unit}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path)):
            yield

    def _replace(self, unit: str, record: dict[str, Any], local: Path) -> None:
        """Download commit ``record`` of ``unit`` and put it in the place of ``local`` (folder swap or rename)."""
        started = time.monotonic()
        if record["kind"] == "dir":
            with atomic_dir(local) as tmp:
                self._download(unit, record, tmp)
        else:
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.pull-{os.getpid()}")
            tmp.mkdir(exist_ok=True)
            try:
                self._download(unit, record, tmp)
                os.replace(tmp / next(iter(record["files"])), local)
            finally:
                for leftover in tmp.glob("*"):
                    leftover.unlink()
                tmp.rmdir()
        self._mark(unit, record["commit"])
        log.info("store: pulled %s@%s (%d file(s)) in %.1fs", unit, record["commit"][:8], len(record["files"]),
                 time.monotonic() - started)

    def _download(self, unit: str, record: dict[str, Any], into: Path) -> None:
        base = f"{self.key(unit)}/{OBJECTS}/{record['commit']}"
        files = record["files"]
        if record["kind"] == "file" and len(files) != 1:
            raise StoreError(f"commit {record['commit']} of {self.url}/{unit} is a file with {len(files)} entries")
        for rel in files:
            if rel.startswith("/") or ".." in rel.split("/"):
                raise StoreError(f"commit {record['commit']} of {self.url}/{unit} names an unsafe path {rel!r}")
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            if files:
                self.fs.get([f"{base}/{rel}" for rel in files], [str(into / rel) for rel in files])
        except FileNotFoundError as e:
            present = {p.removeprefix(base + "/") for p in self.fs.find(base)}
            missing = sorted(set(files) - present)
            raise StoreError(f"commit {record['commit']} of {self.url}/{unit} is unusable: object(s) it lists are "
                             f"missing from the store: {missing[:5] or e}") from e
        except OSError as e:
            raise StoreError(f"download of {self.url}/{unit}@{record['commit']} failed: {e}") from e
        for rel, meta in files.items():
            path = into / rel
            if not path.is_file():
                raise StoreError(f"commit {record['commit']} of {self.url}/{unit} lists {rel}, which is missing "
                                 "from the store")
            if path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
                raise StoreError(f"commit {record['commit']} of {self.url}/{unit}: {rel} differs from its commit "
                                 f"record (size {path.stat().st_size}, recorded {meta['size']}; or its sha256)")

    # --- markers: the commit a local copy holds ------------------------------------------------------------------
    def _marker(self, unit: str) -> Path | None:
        return None if self.markers is None else self.markers / f"{unit}.commit.json"

    def marked(self, unit: str) -> str | None:
        """The commit id the local copy of ``unit`` holds, per its marker (None: unknown, pull again)."""
        marker = self._marker(unit)
        if marker is None or not marker.is_file():
            return None
        return str(json.loads(marker.read_text(encoding="utf-8")).get("commit") or "") or None

    def _mark(self, unit: str, commit: str | None) -> None:
        marker = self._marker(unit)
        if marker is None:
            return
        if commit is None:
            marker.unlink(missing_ok=True)
        else:
            write_json(marker, {"commit": commit, "store": self.url, "unit": unit})

    def forget(self, unit: str) -> None:
        """Drop the marker of ``unit``: its local copy is about to change, so the next pull downloads again."""
        self._mark(unit, None)


def from_settings(settings: Settings) -> Store | None:
    """The store of ``settings.data_url`` with markers under ``var/store/``; None when it is empty (local only)."""
    if not settings.data_url:
        return None
    return Store(settings.data_url, markers=settings.var_dir / "store")
