"""A user's own relevance judgements for ``mmr evaluate --queries``: a CSV with columns ``query`` (a text query) and
``relevant`` (the ids of the manifest items that answer it, several joined by `` ||| `` as captions are), read and
checked against the manifest's ids, then turned into the relevance matrix of any gallery of those items::

    queries = read_queries(Path("queries.csv"), known_ids=set(manifest["id"]))
    relevant = queries.relevance(gallery_ids)  # (queries, gallery items) bool

Other columns are ignored. Every problem is a :class:`~mmretrieval.core.errors.ManifestError` naming the file, the
line (the header is line 1) and the bad value.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmretrieval.core.errors import ManifestError
from mmretrieval.core.schema import CAPTION_SEPARATOR

QUERY, RELEVANT = "query", "relevant"


@dataclass(frozen=True)
class QuerySet:
    """Text queries and, per query, the ids of the items relevant to it (each at least one, in file order)."""

    queries: list[str]
    relevant_ids: list[list[str]]

    def relevance(self, item_ids: Sequence[str]) -> np.ndarray:
        """(queries, len(item_ids)) bool: True where the item is among the query's relevant ids. A query none of
        whose items are in ``item_ids`` gets an empty row (the metrics leave it out)."""
        column = {item: j for j, item in enumerate(item_ids)}
        rel = np.zeros((len(self.queries), len(item_ids)), dtype=bool)
        for q, ids in enumerate(self.relevant_ids):
            rel[q, [column[i] for i in ids if i in column]] = True
        return rel


def split_ids(text: str) -> list[str]:
    """``"a ||| b"`` -> ``["a", "b"]``: stripped, empty parts dropped, duplicates kept once (first first)."""
    parts = (part.strip() for part in str(text).split(CAPTION_SEPARATOR.strip()))
    return list(dict.fromkeys(part for part in parts if part))


def read_queries(path: Path, known_ids: Collection[str]) -> QuerySet:
    """The query set of the CSV at ``path`` (UTF-8, a header row with ``query`` and ``relevant``). Raises
    :class:`ManifestError` for a file that cannot be read, a missing column, no rows, and per line an empty query,
    no relevant id, or a relevant id not in ``known_ids`` (the manifest's ids)."""
    if not Path(path).is_file():
        raise ManifestError(f"query file {path} does not exist")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in (QUERY, RELEVANT) if c not in (reader.fieldnames or [])]
            if missing:
                raise ManifestError(f"query file {path}: missing column(s) {missing} (found {reader.fieldnames or []};"
                                    f" needs {QUERY!r} and {RELEVANT!r}, several relevant ids joined by "
                                    f"{CAPTION_SEPARATOR.strip()!r})")
            queries, relevant = [], []
            for row in reader:
                text, ids = str(row.get(QUERY) or "").strip(), split_ids(row.get(RELEVANT) or "")
                where = f"query file {path}, line {reader.line_num}"
                if not text:
                    raise ManifestError(f"{where}: empty query (relevant {row.get(RELEVANT)!r})")
                if not ids:
                    raise ManifestError(f"{where}: query {text!r} has no relevant id")
                unknown = [i for i in ids if i not in known_ids]
                if unknown:
                    raise ManifestError(f"{where}: relevant id(s) {unknown} of query {text!r} are not in the manifest")
                queries.append(text)
                relevant.append(ids)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"query file {path} cannot be read as UTF-8 CSV: {e}") from e
    if not queries:
        raise ManifestError(f"query file {path} has no query rows")
    return QuerySet(queries, relevant)
