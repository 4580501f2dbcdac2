"""Media files as files: safe relative paths, sizes, and the :class:`Problem` every check returns.

Each check returns ``None`` when the file is usable, else a :class:`Problem` (a reason code and a message).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmretrieval.core.params import ValidateParams


@dataclass(frozen=True)
class Problem:
    reason: str  # machine-readable code, e.g. "missing_file"
    message: str  # for people


def path_problem(rel: str, root: Path) -> Problem | None:
    """Is ``rel`` a safe relative path to an existing file inside ``root``?"""
    if not rel:
        return Problem("empty_path", "path is empty")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return Problem("absolute_path", f"path {rel!r} is absolute; paths must be relative to the dataset root")
    if ".." in p.parts:
        return Problem("parent_path", f"path {rel!r} climbs out with '..'; paths must stay inside the dataset root")
    full = root / p
    try:
        is_file = full.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows (ENAMETOOLONG)
        return Problem("missing_file", f"file {rel[:200]!r} cannot be looked up under {root}: {e.strerror}")
    if not is_file:
        what = "is a folder, not a file" if full.is_dir() else "does not exist"
        return Problem("missing_file", f"file {rel!r} {what} under {root}")
    if not full.resolve().is_relative_to(root.resolve()):
        return Problem("path_escape", f"path {rel!r} resolves outside the dataset root (symlink?)")
    return None


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
