"""An :class:`~mmretrieval.core.cache.ItemCache` whose entries are a few named numpy arrays (one ``.npz`` file each).

Used for item vectors and re-ranker regions (embed) and backbone features (training). Arrays come back exactly as
they were stored (dtype and bytes), so a reused entry is bit-for-bit what was computed. An unreadable entry (a disk
fault; never a half write, which :meth:`ItemCache.put` rules out) counts as a miss and is written again.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmretrieval.core.cache import ItemCache


@dataclass
class ArrayCache(ItemCache):
    """Entries ``<key>.npz`` of named arrays; :meth:`load` and :meth:`save` count reused and computed entries."""

    suffix: str = ".npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of entry ``key``, or None when there is none (or it cannot be read). Counts a hit."""
        path = self.get(key)
        if path is None:
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                arrays = {name: entry[name] for name in entry.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            return None
        self.reused += 1
        return arrays

    def save(self, key: str, **arrays: np.ndarray) -> Path:
        """Store ``arrays`` as entry ``key`` atomically (a killed writer leaves no entry). Counts a computed entry."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **{name: np.ascontiguousarray(a) for name, a in arrays.items()})

        self.computed += 1
        return self.put(key, write)
