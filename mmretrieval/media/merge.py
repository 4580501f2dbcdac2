"""Merge a batch manifest into a dataset's current manifest (``mmr ingest --append`` / ``--remove``).

:func:`plan_merge` decides, before anything is written, which rows the merged version has and where each of its files
comes from; it reads only the batch's files (and, for an id the batch repeats, that id's current file), never the
files of rows the batch does not touch:

* a batch id the dataset does not have is **added**; a batch id it has is **replaced** when any field (caption,
  label, split, path, extra columns ...) or the file's bytes differ, else it stays as it is (**unchanged**). A batch
  row of an existing id that keeps its path may leave its file out of the batch: the file already in the dataset is
  kept (a caption-only update);
* ids of the remove list and batch rows whose ``deleted`` column is true (``true``, ``1``, ``yes``, any case) are
  **removed**; ids to remove that the dataset does not have are **unknown** (reported, not an error);
* a file of the merged version is *carried* over from the current raw folder (hard-linked by the caller: nothing is
  copied again) when the dataset already has those bytes at that path, *copied* from the batch's folder when they
  are new, or recorded as not copied (with the reason, as a full ingest does) when it is missing or unsafe.

A path that two ids of the merged version would share with different contents (other bytes, or a file for one and
none for the other) raises :class:`~mmretrieval.core.errors.IngestConflict` naming the path and both ids, as do an
empty or repeated id in the batch and an id both added and removed.
"""

from __future__ import annotations

import filecmp
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmretrieval.core.errors import IngestConflict, ManifestError
from mmretrieval.core.schema import COLUMNS, METADATA
from mmretrieval.media.files import path_problem

if TYPE_CHECKING:
    import pandas as pd

DELETED = "deleted"  # the batch column that removes an id
DELETE_VALUES, KEEP_VALUES = frozenset({"true", "1", "yes"}), frozenset({"", "false", "0", "no"})
COMPARED = tuple(c for c in COLUMNS if c != "id")  # the fields whose change replaces a row (+ the metadata)
BASE, BATCH, MISSING = "base", "batch", "missing"  # where the file at a path comes from


@dataclass
class MergePlan:
    """The merged version: its rows (``read_manifest``'s columns), the paths to carry over from the current raw
    folder and to copy from the batch's folder, its ``not_copied`` record, and what changed (ids in batch order)."""

    rows: pd.DataFrame
    carry: list[str]
    copy: list[str]
    not_copied: dict[str, dict[str, str]]
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)


def _metadata(raw: str) -> dict[str, str]:
    """A row's extra columns without empty values (a column another batch added is empty on older rows)."""
    return {k: v for k, v in json.loads(raw or "{}").items() if v not in ("", None)}


def split_deleted(batch: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The batch's rows to merge (the ``deleted`` column dropped from their metadata) and the ids it marks deleted.
    Raises :class:`ManifestError` for a ``deleted`` value that is not true/1/yes or false/0/no/empty."""
    meta = [json.loads(m or "{}") for m in batch[METADATA]]
    flags = []
    for i, m in enumerate(meta):
        key = next((k for k in m if k.strip().casefold() == DELETED), None)
        value = str(m.pop(key, "") if key is not None else "").strip().casefold()
        if value not in DELETE_VALUES | KEEP_VALUES:
            raise ManifestError(f"row {i + 2} (id {batch['id'].iloc[i]!r}): deleted must be true/1/yes or "
                                f"false/0/no/empty, got {value!r}")
        flags.append(value in DELETE_VALUES)
    out = batch.assign(**{METADATA: [json.dumps(m, ensure_ascii=False) for m in meta]})
    deleted = [str(i) for i, flag in zip(out["id"], flags, strict=True) if flag]
    return out[[not f for f in flags]].reset_index(drop=True), deleted


def _check_ids(batch: pd.DataFrame, remove: list[str]) -> None:
    """No empty or repeated id in the batch, no id both merged and removed."""
    empty = int((batch["id"] == "").sum())
    if empty:
        raise IngestConflict(f"the batch has {empty} row(s) with an empty id: an appended row needs its id (the key "
                             "it is merged on)")
    repeated = batch["id"][batch["id"].duplicated()].unique().tolist()
    if repeated:
        raise IngestConflict(f"the batch has id(s) on several rows: {repeated[:5]} (one row per id)")
    both = sorted(set(batch["id"]) & set(remove))
    if both:
        raise IngestConflict(f"id(s) {both[:5]} are both in the batch and to be removed: keep one of the two")


class _Files:
    """Where a path's bytes are: the current raw folder (``base``) or the batch's folder; byte comparisons made once."""

    def __init__(self, base_root: Path | None, batch_root: Path | None, base_missing: dict[str, dict[str, str]]):
        self.base_root, self.batch_root, self.base_missing = base_root, batch_root, base_missing
        self._same: dict[str, bool] = {}

    def same(self, rel: str) -> bool:
        """The batch's file at ``rel`` has the bytes of the dataset's file at ``rel``."""
        if rel not in self._same:
            assert self.base_root is not None and self.batch_root is not None
            self._same[rel] = filecmp.cmp(self.base_root / rel, self.batch_root / rel, shallow=False)
        return self._same[rel]

    def in_base(self, rel: str) -> bool:
        return self.base_root is not None and bool(rel) and rel not in self.base_missing


def _batch_claim(row: pd.Series, old: pd.Series | None, files: _Files) -> tuple[str, dict[str, str] | None]:
    """Where the file of a batch row comes from (BASE: the dataset already has these bytes there, BATCH: copy it,
    MISSING: not copied, with the reason)."""
    rel = row["path"]
    assert files.batch_root is not None
    problem = path_problem(rel, files.batch_root)
    same_path = old is not None and old["path"] == rel and files.in_base(rel)
    if problem is None:
        return (BASE, None) if same_path and files.same(rel) else (BATCH, None)
    if problem.reason == "missing_file" and same_path:
        return BASE, None  # the batch left the file out: the one the id has is kept
    return MISSING, {"reason": problem.reason, "message": problem.message}


def _resolve(rel: str, claims: list[tuple[str, str]], files: _Files, name: str) -> str:
    """One content for a path claimed by several ids ``[(kind, id)]``, or :class:`IngestConflict`."""
    kinds = {k for k, _ in claims}
    if kinds == {BASE, BATCH} and files.same(rel):
        return BASE
    if len(kinds) == 1:
        return kinds.pop()
    (k1, id1), (k2, id2) = claims[0], next(c for c in claims if c[0] != claims[0][0])
    what = {BASE: "the file already in the dataset", BATCH: "the batch's file", MISSING: "no file (missing or unsafe)"}
    raise IngestConflict(f"path {rel!r} would hold different contents for two ids of dataset {name!r}: id {id1!r} "
                         f"has {what[k1]}, id {id2!r} has {what[k2]}; give one of them another path (or replace "
                         "both in the batch). Nothing was changed")


def plan_merge(name: str, base: pd.DataFrame | None, base_root: Path | None,
               base_not_copied: dict[str, dict[str, str]], batch: pd.DataFrame | None, batch_root: Path | None,
               remove: Iterable[str] = ()) -> MergePlan:
    """The merged version of dataset ``name`` (module doc). ``base``/``batch``: frames of ``read_manifest`` (None:
    no current version / no batch; the batch's paths are relative to ``batch_root``), ``base_not_copied``: the
    current version's ``not_copied.json``, ``remove``: ids to remove. Raises :class:`IngestConflict` and
    :class:`ManifestError` (module doc)."""
    import pandas as pd

    base = base if base is not None else pd.DataFrame(columns=[*COLUMNS, METADATA])
    batch, deleted = split_deleted(batch) if batch is not None else (base.iloc[0:0], [])
    remove = list(dict.fromkeys([*remove, *deleted]))
    _check_ids(batch, remove)
    files = _Files(base_root, batch_root, base_not_copied)
    known = set(base["id"])
    first = base.drop_duplicates("id").set_index("id")
    repeats = set(base["id"][base["id"].duplicated()])  # an id on several rows is replaced by the batch's one
    plan = MergePlan(base, [], [], {}, removed=[i for i in remove if i in known],
                     unknown=[i for i in remove if i not in known])
    claims: dict[str, list[tuple[str, str]]] = {}
    problems: dict[str, dict[str, str]] = {}
    for _, row in batch.iterrows():
        old = first.loc[row["id"]] if row["id"] in known else None
        kind, problem = _batch_claim(row, old, files) if row["path"] else (BASE, None)
        if old is not None and _same_row(row, old) and (kind == BASE or (
                kind == MISSING and old["path"] == row["path"] and not files.in_base(row["path"]))) \
                and row["id"] not in repeats:
            plan.unchanged += 1
            continue
        (plan.replaced if old is not None else plan.added).append(row["id"])
        if row["path"]:
            claims.setdefault(row["path"], []).append((kind, row["id"]))
            if problem is not None:
                problems.setdefault(row["path"], problem)
    _merge_rows(plan, base, batch)
    _place_files(plan, claims, problems, files, name)
    return plan


def _same_row(row: pd.Series, old: pd.Series) -> bool:
    return all(row[c] == old[c] for c in COMPARED) and _metadata(row[METADATA]) == _metadata(old[METADATA])


def _merge_rows(plan: MergePlan, base: pd.DataFrame, batch: pd.DataFrame) -> None:
    """The merged rows: the current ones in their order (a replaced id in place of its first row, its repeats and
    the removed ids dropped), then the added ones in batch order."""
    import pandas as pd

    by_id = batch.set_index("id", drop=False)
    drop = base["id"].isin(plan.removed) | (base["id"].isin(plan.replaced) & base["id"].duplicated())
    merged = base[~drop].reset_index(drop=True)
    if plan.replaced:
        at = merged.index[merged["id"].isin(plan.replaced)]
        merged.loc[at, list(merged.columns)] = by_id.loc[merged.loc[at, "id"], list(merged.columns)].to_numpy()
    added = by_id.loc[plan.added, list(merged.columns)].reset_index(drop=True)
    plan.rows = pd.concat([merged, added], ignore_index=True) if len(added) else merged


def _place_files(plan: MergePlan, claims: dict[str, list[tuple[str, str]]], problems: dict[str, dict[str, str]],
                 files: _Files, name: str) -> None:
    """Carry, copy or record as not copied every path of the merged rows; conflicts raise before anything changes."""
    touched = set(plan.replaced) | set(plan.added)
    kept = plan.rows[~plan.rows["id"].isin(touched) & (plan.rows["path"] != "")]
    owners = dict(zip(kept["path"], kept["id"], strict=True))
    for rel, ids in claims.items():
        if rel in owners:
            ids = [(BASE if files.in_base(rel) else MISSING, owners[rel]), *ids]
        kind = _resolve(rel, ids, files, name)
        if kind == BATCH:
            plan.copy.append(rel)
        elif kind == BASE:
            plan.carry.append(rel)
        else:
            plan.not_copied[rel] = problems.get(rel) or files.base_missing[rel]
    for rel in owners.keys() - claims.keys():
        if files.in_base(rel):
            plan.carry.append(rel)
        else:
            plan.not_copied[rel] = files.base_missing[rel]
    plan.carry.sort()
    plan.copy.sort()


def write_manifest(rows: pd.DataFrame, path: Path) -> None:
    """Write merged rows as a manifest CSV that :func:`~mmretrieval.core.schema.read_manifest` reads back to the
    same rows: the schema's columns, then every extra column (the keys of ``metadata``, in order of appearance)."""
    import csv

    meta = [json.loads(m or "{}") for m in rows[METADATA]]
    extra = list(dict.fromkeys(k for m in meta for k in m if k not in COLUMNS))
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow([*COLUMNS, *extra])
        for values, m in zip(rows[list(COLUMNS)].itertuples(index=False, name=None), meta, strict=True):
            out.writerow([*values, *(m.get(k, "") for k in extra)])
