"""Media files as files: safe relative paths, sizes, and the :class:`Problem` every check returns.

Each check returns ``None`` when the file is usable, else a :class:`Problem` (a reason code and a message).

Paths from a manifest are looked up with :func:`locate` (names matched across Unicode normalisation forms when
exactly one file fits: a manifest written on Linux in NFC finds a file copied from macOS in NFD) and copied with
:func:`copy_inside`, which opens every component without following links (an ``openat``-style walk with
``O_NOFOLLOW``), so a folder swapped for a symlink between the check and the copy cannot pull a file from outside.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mmretrieval.core.errors import UnsafePathError

if TYPE_CHECKING:
    from mmretrieval.core.params import ValidateParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    reason: str  # machine-readable code, e.g. "missing_file"
    message: str  # for people


@dataclass(frozen=True)
class Located:
    """Where a manifest path was found: ``rel`` as on disk (``renamed`` when it differs from the manifest's name
    only by Unicode normalisation) and ``physical``, the same file relative to the real root with no link left
    in it (what :func:`open_inside` walks)."""

    rel: str
    physical: str
    renamed: bool


def _syntax_problem(rel: str) -> Problem | None:
    if not rel:
        return Problem("empty_path", "path is empty")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return Problem("absolute_path", f"path {rel!r} is absolute; paths must be relative to the dataset root")
    if ".." in p.parts:
        return Problem("parent_path", f"path {rel!r} climbs out with '..'; paths must stay inside the dataset root")
    return None


@functools.lru_cache(maxsize=64)
def _forms_index(folder: str, mtime_ns: int) -> dict[str, tuple[str, ...]]:
    """The names in ``folder`` by their NFC form (``mtime_ns`` keys the cache: a changed folder is listed anew)."""
    index: dict[str, list[str]] = {}
    for name in os.listdir(folder):
        index.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    return {k: tuple(sorted(v)) for k, v in index.items()}


def _component(folder: Path, name: str, rel: str, match_forms: bool) -> tuple[str, bool, int | None] | Problem:
    """The on-disk name of ``name`` in ``folder``: itself when it exists, else the one name equal to it after
    NFC normalisation (canonical equivalence: NFC, NFD and mixed forms of one text). (name, renamed, its
    ``lstat`` mode or None when not looked up) or a Problem."""
    try:
        return name, False, os.lstat(folder / name).st_mode
    except OSError:
        pass
    try:
        index = _forms_index(str(folder), folder.stat().st_mtime_ns) if folder.is_dir() else {}
    except OSError:
        index = {}
    fits = index.get(unicodedata.normalize("NFC", name), ())
    if len(fits) == 1 and match_forms:
        return fits[0], True, None
    if len(fits) > 1:
        forms = ", ".join(f"{f!r} ({_form(f)})" for f in fits)
        return Problem("ambiguous_file", f"file {rel!r}: {folder.name or folder}/ holds {len(fits)} names that are "
                       f"the same text in different Unicode forms ({forms}); rename all but one")
    if len(fits) == 1:
        return Problem("missing_file", f"file {rel!r} does not exist under its exact name, but {fits[0]!r} is the "
                       f"same name in Unicode {_form(fits[0])} (the manifest has {_form(name)}): run `mmr ingest` "
                       "again, which copies it under the manifest's name")
    key = unicodedata.normalize("NFKC", name).casefold()
    near = [f for k, names in index.items() for f in names if unicodedata.normalize("NFKC", k).casefold() == key]
    hint = f"; a similar name exists: {near[0]!r} (differs in compatibility characters or case)" if near else ""
    return Problem("missing_file", f"file {rel!r} does not exist under {folder}{hint}")


def _form(name: str) -> str:
    """The Unicode normalisation form ``name`` is in: "NFC", "NFD" or "mixed"."""
    if unicodedata.is_normalized("NFC", name):
        return "NFC"
    return "NFD" if unicodedata.is_normalized("NFD", name) else "mixed"


def locate(rel: str, root: Path, match_forms: bool = True) -> Located | Problem:
    """Find the manifest path ``rel`` under ``root``: a safe relative path (no absolute path, no ``..``) naming a
    regular file inside ``root`` (a symlink is followed only when it stays inside). With ``match_forms`` a
    component missing under its exact name matches the one name that equals it after Unicode normalisation
    (NFC/NFD); several such names give ``ambiguous_file``, none ``missing_file`` with a hint at a near name."""
    if (problem := _syntax_problem(rel)) is not None:
        return problem
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    folder, found, renamed, modes = root, [], False, []
    try:
        for part in parts:
            step = _component(folder, part, rel, match_forms)
            if isinstance(step, Problem):
                return step
            found.append(step[0])
            renamed |= step[1]
            modes.append(step[2])
            folder = folder / step[0]
        full = folder
        if all(m is not None and not stat.S_ISLNK(m) for m in modes):  # no link under root: inside by construction
            if stat.S_ISREG(modes[-1]):
                return Located("/".join(found), "/".join(found), renamed)
            is_file = False
        else:
            is_file = full.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
        return Problem("missing_file", f"file {rel[:200]!r} cannot be looked up under {root}: {e.strerror}")
    if not is_file:
        what = "is a folder, not a file" if full.is_dir() else "does not exist"
        return Problem("missing_file", f"file {rel!r} {what} under {root}")
    real_root, real = root.resolve(), full.resolve()
    if not real.is_relative_to(real_root):
        return Problem("path_escape", f"path {rel!r} resolves outside the dataset root (symlink?)")
    return Located("/".join(found), real.relative_to(real_root).as_posix(), renamed)


def path_problem(rel: str, root: Path, match_forms: bool = True) -> Problem | None:
    """Is ``rel`` a safe relative path to an existing file inside ``root``? (:func:`locate`; ``match_forms``:
    accept a name in another Unicode normalisation form when exactly one fits.)"""
    found = locate(rel, root, match_forms)
    return found if isinstance(found, Problem) else None


def open_inside(root: Path, rel: str) -> int:
    """A read-only file descriptor of the regular file ``rel`` (no link in it: :attr:`Located.physical`) under the
    folder ``root``, opened component by component relative to the previous folder with ``O_NOFOLLOW`` (folders
    with ``O_DIRECTORY``), then checked with ``fstat``. Raises :class:`UnsafePathError` when a component is a link,
    not a folder, missing, or the file is not a regular file. The caller closes the descriptor."""
    parts = PurePosixPath(rel).parts
    if not parts or ".." in parts or PurePosixPath(rel).is_absolute():
        raise UnsafePathError(f"path {rel!r} is not a relative path inside {root}")
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | nofollow | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as e:
                what = "a symbolic link or not a folder" if not last else "a symbolic link or unreadable"
                raise UnsafePathError(f"{rel!r} under {root}: {'/'.join(parts[:i + 1])!r} is {what} now "
                                      f"({e.strerror}); it changed since it was checked: refused") from e
            os.close(fd)
            fd = nxt
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{rel!r} under {root} is not a regular file: refused")
        return_fd, fd = fd, -1
        return return_fd
    finally:
        if fd >= 0:
            os.close(fd)


def copy_inside(root: Path, rel: str, target: Path) -> Located:
    """Copy the file that the manifest path ``rel`` names under ``root`` (:func:`locate`) to ``target``, reading it
    through :func:`open_inside`: a folder swapped for a symlink after the lookup is refused, never followed.
    Returns where it was found; a name matched in another Unicode form is logged. Raises
    :class:`UnsafePathError` (the path is unsafe, missing or changed under the copy)."""
    import shutil

    found = locate(rel, root)
    if isinstance(found, Problem):
        raise UnsafePathError(f"cannot copy {rel!r}: {found.message}")
    fd = open_inside(root.resolve(), found.physical)
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        os.set_blocking(src.fileno(), True)
        shutil.copyfileobj(src, dst, 1 << 20)
    if found.renamed:
        log.warning("ingest: the manifest names %r, the folder holds it as %r (another Unicode form); copied under "
                    "the manifest's name", rel, found.rel)
    return found


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def decoder_message(error: Exception) -> str:
    """A decoder's message for users: in-memory file objects (``<_io.BytesIO object at 0x...>``) named as what
    they are, the first line only."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "unrecognised or damaged image data (Pillow reads PNG, JPEG, GIF, WebP, BMP, TIFF, ...)"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return _OBJECT_REPR.sub("the data", text)[:300]


def size_problem(path: Path, params: ValidateParams) -> Problem | None:
    size = os.path.getsize(path)
    if size == 0:
        return Problem("empty_file", f"file {path.name} is empty (0 bytes)")
    if size > params.max_file_bytes:
        return Problem("file_too_large", f"file {path.name} is {size} bytes, above {params.max_file_bytes}")
    return None
