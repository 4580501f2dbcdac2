"""File digests remembered by the file's identity and times, so that an unchanged file is not read again.

Validate and clean check every file of a data version against the digest recorded for it: the raw files against
DVC's md5, the cleaned files (cache entries hard-linked into ``data/clean``) against their recorded sha256. Read
byte for byte, that check costs more than the work it guards once nearly all items are reused (at 100k items: ~50 s
of an append's validate and ~60 s of its clean, issue 24). :class:`FileDigests` remembers each file's md5 and sha256
together with its ``(device, inode, size, mtime_ns)`` and serves them again while all four are unchanged.

What that trusts: a file's bytes do not change unless its inode, size or modification time does, which is what DVC
trusts for the data versions themselves (its state database), so this check is as strong as the version it checks
against. Hard links (ingest carrying a file into a new version, clean linking a cache entry into ``data/clean``)
change none of the four. A same-size rewrite whose mtime was put back is not seen once a digest is remembered (it
is seen while none is: the first check after ingest reads every file). A digest is not remembered while the file's
mtime is within :data:`RACY_S` of the hashing (a write in the same clock tick could follow unseen: git's "racily
clean" rule). ``MMR_REHASH=1`` turns the memo off: every file is read, every time.

The memo is one SQLite file per machine (``var/cache/file-digests.sqlite``, next to the per-item caches): local state
like them, never a hand-off; deleting it only costs time. A memo that cannot be opened or written (read-only file
system, a corrupt file) is reported once and the files are read.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from mmretrieval.core.io import file_digests

log = logging.getLogger(__name__)

RACY_S = 2.0  # a file changed this recently (s) is hashed but not remembered
_FLUSH = 2000  # remembered rows written per transaction
_SCHEMA = ("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, "
           "mtime_ns INTEGER, md5 TEXT, sha256 TEXT)")


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime_ns) as SQLite's signed 64-bit integers (some file systems report inode numbers
    of 2**63 and above)."""
    def signed(n: int) -> int:
        return n - (1 << 64) if n >= (1 << 63) else n

    return signed(st.st_dev), signed(st.st_ino), st.st_size, st.st_mtime_ns


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=60)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


def _open(db: Path) -> sqlite3.Connection | None:
    """The memo at ``db``, made when missing and made anew when it is not a database (a memo only saves time);
    None, with one warning, when it cannot be used (a read-only or full file system)."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        try:
            return _connect(db)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):  # locked, read-only, unopenable: not damage
                raise
            log.warning("file digests: %s is damaged (%s); starting a new memo", db, e)
            for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                leftover.unlink(missing_ok=True)
            return _connect(db)
    except (sqlite3.Error, OSError) as e:
        log.warning("file digests: the memo %s cannot be used (%s); every file is read (MMR_REHASH=1 says so "
                    "without the warning)", db, e)
        return None


class FileDigests:
    """md5 and sha256 of files, read once and remembered by identity (see the module notes).

    ``db``: the SQLite file, or None for no memory (every call reads the file). ``racy_s``: see :data:`RACY_S`.
    ``hashed`` and ``remembered`` count this object's reads and memo hits (stage reports show them). Use as a
    context manager, or call :meth:`close`, so that the remembered rows are written."""

    def __init__(self, db: Path | None, racy_s: float | None = None) -> None:
        self.racy_s = RACY_S if racy_s is None else racy_s
        self.hashed = self.remembered = 0
        self._pending: dict[str, tuple] = {}
        self._conn: sqlite3.Connection | None = None
        if db is not None:
            self._conn = _open(db)

    def __enter__(self) -> FileDigests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def of(self, path: Path) -> dict[str, str]:
        """``{"md5": hex, "sha256": hex}`` of ``path``'s bytes: remembered while its identity is unchanged, else
        read (1 MiB chunks). Raises ``OSError`` (``FileNotFoundError`` for a missing file)."""
        key = os.fspath(path)
        st = os.stat(key)
        row = self._lookup(key)
        if row is not None and tuple(row[:4]) == _identity(st):
            self.remembered += 1
            return {"md5": row[4], "sha256": row[5]}
        found = file_digests(path)
        self.hashed += 1
        after = os.stat(key)
        if _identity(after) == _identity(st) and time.time() - st.st_mtime > self.racy_s:
            self._remember(key, _identity(st), found["md5"], found["sha256"])
        return found

    def sha256(self, path: Path) -> str:
        """The hex sha256 of ``path`` (:meth:`of`)."""
        return self.of(path)["sha256"]

    def record(self, path: Path, digests: dict[str, str]) -> None:
        """Remember ``digests`` (md5 and sha256) of a file this process has just written and hashed itself (a cache
        entry): no second read, and no racy wait, since no other writer shares it."""
        st = os.stat(path)
        self._remember(os.fspath(path), _identity(st), digests["md5"], digests["sha256"])

    def _lookup(self, key: str) -> tuple | None:
        if key in self._pending:
            return self._pending[key]
        if self._conn is None:
            return None
        try:
            return self._conn.execute("SELECT dev, ino, size, mtime_ns, md5, sha256 FROM digests "
                                      "WHERE path = ?", (key,)).fetchone()
        except sqlite3.Error as e:
            self._fail(e)
            return None

    def _remember(self, key: str, identity: tuple, md5: str, sha256: str) -> None:
        if self._conn is None:
            return
        self._pending[key] = (*identity, md5, sha256)
        if len(self._pending) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        """Write the rows remembered since the last flush (one transaction)."""
        if self._conn is None or not self._pending:
            return
        rows = [(k, *v) for k, v in self._pending.items()]
        self._pending.clear()
        try:
            with self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except (sqlite3.Error, OverflowError) as e:
            self._fail(e)

    def close(self) -> None:
        """Flush and close the memo."""
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def counts(self) -> dict[str, int]:
        """``{"files_read": n, "digests_remembered": m}`` of this object's calls."""
        return {"files_read": self.hashed, "digests_remembered": self.remembered}

    def _fail(self, error: Exception) -> None:
        log.warning("file digests: the memo failed (%s); the remaining files are read", error)
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._pending.clear()
