"""Report and prune the per-item caches (``var/cache/<kind>/``, :class:`~mmretrieval.core.cache.ItemCache`): what
``mmr cache info`` and ``mmr cache prune`` run.

An entry is the files ``<kind>/<key[:2]>/<key><suffix>`` of one key (``clean-media`` has two: the cleaned file and
its JSON sidecar); its last use is the newest modification time of its files, which every hit refreshes
(:meth:`ItemCache.get`). Pruning removes entries unused for longer than an age, then the least recently used ones
until the cache fits a size, plus the temporary files of killed writers older than an hour
(:meth:`ItemCache.sweep`). It is safe while stages run: entries used in the last :data:`GRACE_S` seconds are never
removed, an entry used between the scan and its removal is kept, and a reader that still loses the race sees a
miss (:meth:`ItemCache.read`), never half an entry: files are only ever renamed into place or unlinked. Removing an
entry only costs time (the next run computes it again).

Sizes are bytes (``20GB``: powers of 1000; ``20GiB`` or ``20G``: powers of 1024); ages are seconds (``30d``, ``12h``).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmretrieval.core.errors import CacheError

GRACE_S = 600.0  # entries used this recently stay: a running stage may be about to open them
TMP_AGE_S = 3600.0  # what ItemCache.sweep removes: temporary files older than an hour
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_KIND = re.compile(r"[a-z0-9][a-z0-9_-]*")


def parse_size(text: str, what: str = "size") -> int:
    """Bytes of a size such as ``20GB`` (1000-based), ``512MiB`` or ``512M`` (1024-based), ``1024`` (bytes) or ``0``.
    Raises :class:`CacheError` naming ``what`` (e.g. ``--max-size``) and the value."""
    found = _NUMBER.fullmatch(str(text))
    unit = found.group(2).lower() if found else ""
    if not found or unit not in _UNITS:
        raise CacheError(f"{what} {text!r} is not a size: use a number and a unit, e.g. 20GB, 500MB, 2GiB or 0")
    value = float(found.group(1)) * _UNITS[unit]
    if not math.isfinite(value):
        raise CacheError(f"{what} {str(text)[:40]!r}... is not a size: the number is too large")
    return int(value)


def parse_age(text: str, what: str = "age") -> float:
    """Seconds of an age such as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``. Raises :class:`CacheError` naming
    ``what`` (e.g. ``--older-than``) and the value."""
    found = _NUMBER.fullmatch(str(text))
    unit = found.group(2).lower() if found else ""
    if not found or unit not in _AGES:
        raise CacheError(f"{what} {text!r} is not an age: use a number and a unit (s, m, h, d, w), e.g. 30d or 12h")
    return float(found.group(1)) * _AGES[unit]


@dataclass(frozen=True)
class Entry:
    """One cache entry: ``files`` (its paths, the JSON commit mark first), ``size`` in bytes (``linked``: the bytes
    of files also hard-linked from a stage output, which removing the entry does not free) and ``last_used``
    (epoch seconds: the newest modification time of its files)."""

    kind: str
    files: tuple[Path, ...]
    size: int
    linked: int
    last_used: float


@dataclass(frozen=True)
class Scan:
    """What a kind's folder holds: its entries and its writers' temporary files as (path, mtime, size)."""

    kind: str
    entries: list[Entry]
    tmp: list[tuple[Path, float, int]]


def kinds(root: Path, kind: str | None = None) -> list[str]:
    """The kinds under ``root`` (``var/cache``), sorted; ``[kind]`` when given. Raises :class:`CacheError` for a
    ``kind`` that is not there, naming it and the kinds there are."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if kind is None:
        return found
    if not _KIND.fullmatch(kind) or kind not in found:
        raise CacheError(f"--kind {kind!r}: no such cache under {root} (there are: {', '.join(found) or 'none'})")
    return [kind]


def scan(root: Path, kind: str) -> Scan:
    """The entries and temporary files of ``root/kind`` (one ``stat`` per file; a file or folder removed meanwhile
    is skipped)."""
    groups: dict[str, list[tuple[Path, os.stat_result]]] = {}
    tmp: list[tuple[Path, float, int]] = []
    for shard in sorted((root / kind).iterdir()) if (root / kind).is_dir() else []:
        try:
            items = list(os.scandir(shard)) if shard.is_dir() else []
        except FileNotFoundError:
            continue
        for item in items:
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if item.name.startswith("."):
                tmp.append((Path(item.path), st.st_mtime, st.st_size))
            elif item.is_file(follow_symlinks=False):
                groups.setdefault(f"{shard.name}/{item.name.split('.', 1)[0]}", []).append((Path(item.path), st))
    entries = []
    for files in groups.values():
        files.sort(key=lambda f: (f[0].suffix != ".json", f[0].name))  # the sidecar (commit mark) goes first
        entries.append(Entry(kind, tuple(f for f, _ in files), sum(st.st_size for _, st in files),
                             sum(st.st_size for _, st in files if st.st_nlink > 1),
                             max(st.st_mtime for _, st in files)))
    return Scan(kind, entries, tmp)


def _when(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if epoch is not None else None


def _summary(entries: Iterable[Entry], tmp: list[tuple[Path, float, int]]) -> dict[str, Any]:
    entries = list(entries)
    used = [e.last_used for e in entries]
    return {"entries": len(entries), "bytes": sum(e.size for e in entries),
            "linked_bytes": sum(e.linked for e in entries),
            "oldest_use": _when(min(used)) if used else None, "newest_use": _when(max(used)) if used else None,
            "tmp_files": len(tmp), "tmp_bytes": sum(size for _, _, size in tmp)}


def info(root: Path, kind: str | None = None) -> dict[str, Any]:
    """Per kind and in total: ``entries``, ``bytes``, ``linked_bytes`` (also hard-linked from stage outputs:
    removing those frees nothing while the output exists), ``oldest_use`` and ``newest_use`` (UTC, ISO 8601; None
    for an empty cache), ``tmp_files`` and ``tmp_bytes`` (writers' temporary files). Raises :class:`CacheError`
    for an unknown ``kind``."""
    scans = [scan(root, k) for k in kinds(root, kind)]
    return {"root": str(root), "kinds": {s.kind: _summary(s.entries, s.tmp) for s in scans},
            "total": _summary([e for s in scans for e in s.entries], [t for s in scans for t in s.tmp])}


def _remove(entry: Entry, dry_run: bool) -> bool:
    """Remove ``entry``'s files unless one was used since the scan (then keep it: False). A file already gone
    is fine."""
    try:
        if any(os.stat(f).st_mtime > entry.last_used for f in entry.files):
            return False
    except FileNotFoundError:
        pass
    if not dry_run:
        for f in entry.files:  # the sidecar first: without it a clean-media entry is a miss, never half a hit
            f.unlink(missing_ok=True)
    return True


def _victims(entries: list[Entry], max_size: int | None, older_than: float | None, now: float, grace_s: float
             ) -> tuple[list[Entry], bool]:
    """The entries to remove, least recently used first: unused for longer than ``older_than`` seconds, then the
    oldest until the rest fits ``max_size`` bytes; never one used in the last ``grace_s`` seconds. Also whether
    the size could not be reached for that reason."""
    fresh = now - grace_s
    cutoff = min(now - older_than, fresh) if older_than is not None else -math.inf
    ordered = sorted(entries, key=lambda e: e.last_used)
    out = [e for e in ordered if e.last_used < cutoff]
    if max_size is None:
        return out, False
    total = sum(e.size for e in ordered[len(out):])
    for e in ordered[len(out):]:
        if total <= max_size:
            break
        if e.last_used >= fresh:
            return out, True
        out.append(e)
        total -= e.size
    return out, False


def prune(root: Path, max_size: int | None = None, older_than: float | None = None, kind: str | None = None,
          dry_run: bool = False, now: float | None = None, grace_s: float = GRACE_S) -> dict[str, Any]:
    """Remove the entries of ``root`` (or of its ``kind``) unused for longer than ``older_than`` seconds, then the
    least recently used ones until they fit in ``max_size`` bytes (all selected kinds together), and temporary
    files older than an hour. ``dry_run``: only say what would go. Returns ``{"root", "dry_run", "removed",
    "removed_bytes", "kept", "kept_bytes", "tmp_removed", "over_budget", "kinds": {kind: {"removed",
    "removed_bytes", "kept", "kept_bytes"}}}``; ``over_budget``: the size was not reached because the rest was used
    in the last ``grace_s`` seconds. Raises :class:`CacheError` for no limit, a negative one or an unknown kind."""
    from mmretrieval.core.cache import ItemCache

    if max_size is None and older_than is None:
        raise CacheError("nothing to prune by: give a size (--max-size, e.g. 20GB) or an age (--older-than, e.g. 30d)")
    if (max_size is not None and max_size < 0) or (older_than is not None and older_than < 0):
        raise CacheError(f"a size or age below zero cannot be pruned to: {max_size=}, {older_than=}")
    now = time.time() if now is None else now
    scans = [scan(root, k) for k in kinds(root, kind)]
    tmp_removed = sum(1 for s in scans for _, mtime, _ in s.tmp if mtime < now - TMP_AGE_S) if dry_run else \
        sum(ItemCache(root, s.kind, "").sweep() for s in scans)
    victims, over = _victims([e for s in scans for e in s.entries], max_size, older_than, now, grace_s)
    gone = {id(e) for e in victims if _remove(e, dry_run)}
    per = {s.kind: {"removed": sum(id(e) in gone for e in s.entries),
                    "removed_bytes": sum(e.size for e in s.entries if id(e) in gone),
                    "kept": sum(id(e) not in gone for e in s.entries),
                    "kept_bytes": sum(e.size for e in s.entries if id(e) not in gone)} for s in scans}
    total = {k: sum(p[k] for p in per.values()) for k in ("removed", "removed_bytes", "kept", "kept_bytes")}
    return {"root": str(root), "dry_run": dry_run, **total, "tmp_removed": tmp_removed, "over_budget": over,
            "kinds": per}


def human(size: float) -> str:
    """``size`` bytes for people: ``1.5 GB`` (powers of 1000, like ``--max-size 20GB``)."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} TB"


def _entries(n: int) -> str:
    return f"{n:,} entry" if n == 1 else f"{n:,} entries"


def describe_info(report: dict[str, Any]) -> list[str]:
    """Lines for people of an :func:`info` report: one per kind, then the total."""
    def line(name: str, s: dict[str, Any]) -> str:
        used = f"used {s['oldest_use']} .. {s['newest_use']}" if s["entries"] else "empty"
        linked = f" ({human(s['linked_bytes'])} also in stage outputs)" if s["linked_bytes"] else ""
        tmp = f"; {s['tmp_files']} temporary file(s)" if s["tmp_files"] else ""
        return f"{name:<16} {_entries(s['entries']):>17} {human(s['bytes']):>10}{linked}, {used}{tmp}"

    return [f"{report['root']}:", *(line(k, s) for k, s in report["kinds"].items()),
            line("total", report["total"])]


def describe_prune(result: dict[str, Any]) -> list[str]:
    """Lines for people of a :func:`prune` result."""
    verb = "would remove" if result["dry_run"] else "removed"
    lines = [f"{kind:<16} {verb} {_entries(p['removed'])} ({human(p['removed_bytes'])}), kept {p['kept']:,} "
             f"({human(p['kept_bytes'])})" for kind, p in result["kinds"].items()]
    lines.append(f"{result['root']}: {verb} {_entries(result['removed'])} ({human(result['removed_bytes'])}) and "
                 f"{result['tmp_removed']} temporary file(s); kept {result['kept']:,} ({human(result['kept_bytes'])})")
    if result["over_budget"]:
        lines.append(f"still above the size: the rest was used in the last {GRACE_S / 60:.0f} minutes (a running "
                     "stage may need it); prune again later")
    return lines
