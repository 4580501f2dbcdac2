"""An :class:`~mmretrieval.core.cache.ItemCache` whose entries are a few named numpy arrays (one ``.npz`` file each).

Used for item vectors and re-ranker regions (embed) and backbone features (training). Arrays come back exactly as
they were stored (dtype and bytes), so a reused entry is bit-for-bit what was computed. An unreadable entry (a disk
fault; never a half write, which :meth:`ItemCache.put` rules out) counts as a miss and is written again.

Packs (as for JSON entries, :mod:`mmretrieval.core.cache`): :meth:`ArrayCache.open_pack` reads one ``.npz`` per
scope (embed: a dataset's shard) holding the entries the scope's last run used, stacked (a ``keys`` array and one
array per name), so a reused entry costs a dictionary lookup instead of opening its own file (~0.1 ms each: ~10 s
of an append's embed at 100k items). Only entries of the most common layout (names, shapes, dtypes) are stacked;
the others (a video's frames of another count) stay in their files. Keys are content addresses, so a pack can only
lack entries, never hold a wrong one.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmretrieval.core.cache import ItemCache, write_pack

# what reading a damaged .npz raises (truncated, not a zip, a flipped bit in its headers, a .npy in its place)
_DAMAGED = (OSError, ValueError, TypeError, NotImplementedError, zipfile.BadZipFile, EOFError)


@dataclass
class ArrayCache(ItemCache):
    """Entries ``<key>.npz`` of named arrays; :meth:`load` and :meth:`save` count reused and computed entries."""

    suffix: str = ".npz"
    _rows: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _stacked: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of entry ``key`` (from the open pack, else its file), or None when there is none (or it
        cannot be read). Counts a hit."""
        row = self._rows.get(key)
        if row is not None:
            self.get(key)  # marks the entry's use for pruning (one pruned meanwhile is still served from the pack)
            arrays = {name: stacked[row].copy() for name, stacked in self._stacked.items()}
        else:
            path = self.get(key)
            if path is None:
                return None
            try:
                with np.load(path, allow_pickle=False) as entry:
                    arrays = {name: entry[name] for name in entry.files}
            except _DAMAGED:
                return None
        self.reused += 1
        if self._used is not None:
            self._used[key] = arrays
        return arrays

    def pack_path(self, scope: str) -> Path:
        return super().pack_path(scope).with_suffix(".npz")

    def open_pack(self, scope: str) -> int:
        """Load the pack of ``scope`` (one ``.npz``) and start recording the entries used; returns how many entries
        it holds (0: none, or unreadable)."""
        self._scope, self._used, self._rows, self._stacked = scope, {}, {}, {}
        try:
            with np.load(self.pack_path(scope), allow_pickle=False) as pack:
                stacked = {name: pack[name] for name in pack.files}
            keys = [k.decode("ascii") for k in stacked.pop("keys").tolist()]
            if any(len(a) != len(keys) for a in stacked.values()):
                return 0
        except (*_DAMAGED, KeyError, AttributeError):  # none, or damaged (a .npy, wrong types): entry files
            return 0
        self._rows, self._stacked = {k: i for i, k in enumerate(keys)}, stacked
        return len(keys)

    def save_pack(self) -> int:
        """Write the pack of the open scope: the entries loaded or saved since :meth:`open_pack` that share the most
        common layout, stacked (renamed into place). Returns how many; 0 without an open pack or entries."""
        if not self._used:
            return 0

        def layout(arrays: dict[str, np.ndarray]) -> tuple:
            return tuple(sorted((n, a.shape, a.dtype.str) for n, a in arrays.items()))

        common = Counter(layout(a) for a in self._used.values()).most_common(1)[0][0]
        keys = [k for k, a in self._used.items() if layout(a) == common]
        stacked = {name: np.stack([self._used[k][name] for k in keys]) for name, _, _ in common}
        def write(f: object) -> None:
            np.savez(f, keys=np.array([k.encode("ascii") for k in keys]), **stacked)

        return len(keys) if write_pack(self.pack_path(self._scope), write) else 0

    def save(self, key: str, **arrays: np.ndarray) -> Path:
        """Store ``arrays`` as entry ``key`` atomically (a killed writer leaves no entry). Counts a computed entry."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **{name: np.ascontiguousarray(a) for name, a in arrays.items()})

        self.computed += 1
        if self._used is not None:
            self._used[key] = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        return self.put(key, write)
