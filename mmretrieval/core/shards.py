"""Embedding shards (``part-<k>.parquet``: id, modality, vector, versions, video frame columns) read a block of rows
at a time: the vectors of a block come out of Arrow as one (rows, dim) float32 array, never a Python object per
vector, so a reader holds one block however large the corpus (embed's finish and publish stream through them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

BLOCK_ROWS = 1000  # rows per block read from a shard (Arrow record batches of one row group)
KEY_COLUMNS = ("id", "modality", "vector")


class Block(NamedTuple):
    """``rows`` consecutive rows of a shard: ``ids`` (list of str), ``modalities`` ((rows,) object array of str),
    ``vectors`` ((rows, dim) float32; (0, 0) for an empty block) and ``batch`` (the Arrow record batch, with any
    further columns that were asked for)."""

    shard: str
    ids: list[str]
    modalities: np.ndarray
    vectors: np.ndarray
    batch: Any

    @property
    def rows(self) -> int:
        return len(self.ids)


def vectors_of(column: Any) -> np.ndarray:
    """A (rows, dim) float32 array from an Arrow list column whose every row is one vector; (0, 0) with no rows.
    Raises :class:`ValueError` naming the lengths when the rows are not all one length (or a row is null)."""
    import pyarrow as pa

    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = np.diff(column.offsets.to_numpy())
        if column.null_count or lengths.min() != lengths.max():
            raise ValueError(f"rows hold vectors of {sorted(set(lengths.tolist()))[:5]} values, nulls: "
                             f"{column.null_count}")
        dim = int(lengths[0])
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(column), dim)


def read_blocks(folder: Path, shards: Sequence[str], columns: Sequence[str] = KEY_COLUMNS,
                rows: int = BLOCK_ROWS) -> Iterator[Block]:
    """The shards in ``folder``, in order, as :class:`Block` s of at most ``rows`` rows; ``columns`` beyond
    :data:`KEY_COLUMNS` ride along in ``Block.batch`` when a shard has them (video frame columns). Raises
    :class:`ValueError` (from :func:`vectors_of`) naming the shard for ragged vectors."""
    import pyarrow.parquet as pq

    for shard in shards:
        reader = pq.ParquetFile(folder / shard)
        present = [c for c in dict.fromkeys([*KEY_COLUMNS, *columns]) if c in reader.schema_arrow.names]
        for batch in reader.iter_batches(batch_size=rows, columns=present):
            try:
                vectors = vectors_of(batch.column("vector"))
            except ValueError as e:
                raise ValueError(f"{shard}: {e}") from e
            yield Block(shard, batch.column("id").to_pylist(),
                        batch.column("modality").to_numpy(zero_copy_only=False).astype(object), vectors, batch)
        reader.close()
