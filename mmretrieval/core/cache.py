"""Content-addressed per-item caches: work keyed by what determines it, reused across data versions.

An entry's key is the SHA-256 of everything that decides its content: the input bytes' digest (a file's sha256)
plus the settings of the step that made it (or the model version that encoded it). Changed bytes or settings give a
new key, so a cache can never serve a result made from different inputs; deleting a cache only costs time.

Layout (local to the machine: a cache, never a hand-off)::

    var/cache/<kind>/<key[:2]>/<key><suffix>

Entries are written to a temporary file of this writer's own and renamed into place (:meth:`ItemCache.put`), so a
killed writer leaves no half entry under a key (at most a ``.tmp`` file, which :meth:`ItemCache.get` never reads and
:meth:`ItemCache.sweep` removes). A hit refreshes the entry's modification time, so the time of an entry's last use
is its mtime: :mod:`mmretrieval.core.cache_admin` reports and prunes caches by it (least recently used first), and an
entry may vanish between :meth:`ItemCache.get` and the read: :meth:`ItemCache.read` turns that into a miss.

Small JSON entries (validate's verdicts, clean's sidecars) are also kept in a *pack*: one file per cache settings and
scope (a dataset) holding every entry the scope's last run used, ``var/cache/<kind>/packs/<name>.json``. A run reads
its pack once (:meth:`ItemCache.open_pack`) instead of one file per item (at 100k items, tens of seconds), finds
entries in it by key (:meth:`ItemCache.recall`, falling back to the entry file) and writes the pack of what it used
at the end (:meth:`ItemCache.save_pack`). Keys are content addresses, so a pack can only be missing entries, never
hold a wrong one; pruning treats a pack as one more entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def fingerprint(*parts: Any) -> str:
    """Hex SHA-256 of ``parts`` as canonical JSON (sorted keys; pydantic models and paths via ``str``): the settings
    part of a key. Equal inputs give equal fingerprints across processes and machines."""
    def plain(value: Any) -> Any:
        dump = getattr(value, "model_dump", None)
        return dump(mode="json") if callable(dump) else str(value)

    text = json.dumps(parts, sort_keys=True, default=plain, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_pack(target: Path, write: Callable[[Any], None]) -> bool:
    """``write(binary file)`` into a temporary file renamed to ``target`` (never half a pack). A pack only saves
    time: one that cannot be written (read-only or full file system) is logged and skipped (False)."""
    import logging

    log, skipped = logging.getLogger(__name__), "cache: pack %s not written (%s); the next run reads entry files"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem[:16]}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    except OSError as e:
        log.warning(skipped, target, e)
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        log.warning(skipped, target, e)
        return False
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


@dataclass
class ItemCache:
    """One kind of per-item result (e.g. ``clean-media``, ``vectors``) under ``root/<kind>/``.

    ``settings`` is the fingerprint (:func:`fingerprint`) of what, besides the input bytes, decides an entry;
    :meth:`key` mixes it with an item's digest. ``reused`` and ``computed`` count this run's hits and misses (stage
    results and logs report them)."""

    root: Path
    kind: str
    settings: str
    suffix: str = ""
    reused: int = field(default=0, init=False)
    computed: int = field(default=0, init=False)
    _pack: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _used: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _scope: str = field(default="", init=False, repr=False)

    @property
    def folder(self) -> Path:
        return self.root / self.kind

    def key(self, digest: str) -> str:
        """The entry key of an input whose bytes hash to ``digest`` (hex sha256) under this cache's settings."""
        if not digest:
            raise ValueError(f"cache {self.kind!r}: an empty digest cannot key an entry")
        return hashlib.sha256(f"{self.settings}:{digest}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{self.suffix}"

    def get(self, key: str, touch: bool = True) -> Path | None:
        """The entry's file, or None when there is none (a miss is not counted here: see :meth:`fetch`). A hit
        refreshes the file's modification time (one ``utime`` call): the entry's last use, which pruning reads;
        ``touch=False`` leaves it (a file hard-linked into a DVC-tracked output, whose changed mtime would make DVC
        hash it again: its entry marks use on another file). A prune may still remove the entry before the caller
        opens it: read it with :meth:`read` (or treat ``FileNotFoundError`` as a miss)."""
        path = self.path(key)
        if not touch:
            return path if path.is_file() else None
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:  # another user's entry or a read-only file system: a hit that is not marked as used
            return path if path.is_file() else None
        return path

    def read(self, key: str, reader: Callable[[Path], Any]) -> Any | None:
        """``reader(entry file)`` of the entry ``key``, or None when there is none, including one removed (by a
        prune) after it was found: never half an entry, since an entry is only ever renamed into place or
        unlinked, and an open file keeps its bytes. Counts nothing."""
        path = self.get(key)
        if path is None:
            return None
        try:
            return reader(path)
        except FileNotFoundError:
            return None

    def put(self, key: str, write: Callable[[Path], None]) -> Path:
        """Make the entry ``key`` by ``write(tmp_path)`` and rename it into place; returns the entry's path. A failed
        or killed ``write`` leaves no entry."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=f".tmp{self.suffix}", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def fetch(self, key: str, write: Callable[[Path], None]) -> tuple[Path, bool]:
        """The entry ``key``, made by ``write`` when missing: (path, reused). Counts the hit or the miss."""
        found = self.get(key)
        if found is not None:
            self.reused += 1
            return found, True
        self.computed += 1
        return self.put(key, write), False

    def pack_path(self, scope: str) -> Path:
        """The pack of ``scope`` (e.g. a dataset name) under this cache's settings."""
        return self.folder / "packs" / f"{fingerprint(scope, self.settings)[:40]}.json"

    def open_pack(self, scope: str) -> int:
        """Load the pack of ``scope`` (one read) and start recording the entries used; returns how many entries it
        holds (0 when there is none, or it cannot be read: then entries are read one file each)."""
        self._scope, self._used = scope, {}
        try:
            with open(self.pack_path(scope), encoding="utf-8") as f:
                loaded = json.load(f)
            self._pack = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError, RecursionError):  # none, or damaged: the entry files are read
            self._pack = {}
        return len(self._pack)

    def recall(self, key: str) -> dict[str, Any] | None:
        """The JSON object of the entry ``key``: from the open pack (its entry file's use still marked), else from
        its entry file; None when there is none or it is damaged (not a JSON object). Counts nothing; records the
        entry as used for :meth:`save_pack`."""
        if key in self._pack:
            value = self._pack[key]
            self.get(key)  # marks the entry's use (pruning reads it); one pruned meanwhile still has its value here
        else:
            try:
                value = self.read(key, lambda entry: json.loads(entry.read_text(encoding="utf-8")))
            except ValueError:  # a damaged entry file (not JSON, not UTF-8): a miss, made again
                value = None
        if not isinstance(value, dict):  # every JSON entry is an object; anything else is damage: a miss
            return None
        if self._used is not None:
            self._used[key] = value
        return value

    def remember(self, key: str, value: dict[str, Any]) -> Path:
        """Make the entry ``key`` holding the object ``value`` as JSON (:meth:`put`) and record it for the pack."""
        path = self.put(key, lambda tmp: tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8"))
        if self._used is not None:
            self._used[key] = value
        return path

    def save_pack(self) -> int:
        """Write the pack of the open scope: the entries recalled or remembered since :meth:`open_pack` (renamed
        into place, like an entry). Returns how many; 0 (nothing written) without an open pack."""
        if not self._used:
            return 0
        used = self._used

        def write(f: Any) -> None:
            f.write(json.dumps(used, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

        return len(used) if write_pack(self.pack_path(self._scope), write) else 0

    def counts(self) -> dict[str, int]:
        """``{"reused": n, "computed": m}`` of this run, for stage results and logs."""
        return {"reused": self.reused, "computed": self.computed}

    def sweep(self) -> int:
        """Remove temporary files left by killed writers (older than an hour); returns how many went."""
        import time

        removed, cutoff = 0, time.time() - 3600
        for tmp in self.folder.glob("*/.*.tmp*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
