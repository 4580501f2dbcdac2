"""``ingest``: register a dataset: its manifest and media under ``data/raw/<name>/``, DVC-tracked (one data version
per call).

* A full ingest (``mmr ingest MANIFEST --name DS``) replaces the dataset with the manifest and every file it names.
* An append (``--append``) merges a batch into the current version (:mod:`mmretrieval.media.merge`: new ids added,
  changed ids replaced, identical ones left alone; ``deleted`` rows and ``--remove ids.txt`` remove ids). The new
  version holds the full merged ``manifest.csv`` and media, so any version can be checked out and rebuilt; its cost
  follows the batch: the files of the current version are hard-linked into the new folder (copied only across file
  systems), which DVC recognises without hashing them again, and only the batch's files are read and copied.
  ``--append`` on a dataset that does not exist yet is its first ingest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mmretrieval.backends import versioning
from mmretrieval.core.errors import DatasetNotFoundError, IngestConflict, ManifestError
from mmretrieval.core.io import atomic_dir, write_json
from mmretrieval.core.layout import NOT_COPIED
from mmretrieval.core.locks import dataset_lock
from mmretrieval.core.progress import progress
from mmretrieval.core.schema import check_dataset_name, read_manifest
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.media.files import path_problem
from mmretrieval.media.merge import MergePlan, plan_merge, write_manifest

log = logging.getLogger(__name__)
SHOWN = 10  # ids listed per kind of change in the result and the log


def ingest(manifest: Path | None, name: str, settings: Settings | None = None, append: bool = False,
           remove: Path | None = None) -> dict[str, Any]:
    """Make a new data version of dataset ``name`` and return what it holds (docs/stages.md, "ingest").

    Without ``append``: copy the manifest and every file it names safely (relative, inside its folder), replacing
    the dataset. With ``append``: merge ``manifest`` (optional with ``remove``) into the current version and remove
    the ids listed one per line in ``remove`` (blank lines and ``#`` comments skipped). Rows whose file is unsafe or
    missing are kept in the manifest: ``validate`` quarantines them with the reason (``not_copied.json``).

    Raises :class:`ManifestError` (an unreadable manifest or id list), :class:`IngestConflict` (a batch that cannot
    be merged, or a call that would change nothing but names ids the dataset does not have) and
    :class:`DatasetNotFoundError` (ids to remove from a dataset that has no version); nothing changes then.
    """
    settings = settings or get_settings()
    check_dataset_name(name)
    if manifest is None and remove is None:
        raise ManifestError(f"nothing to ingest into {name!r}: give a manifest, ids to remove, or both")
    if remove is not None and manifest is not None and not append:
        raise IngestConflict("removing ids edits the current version of the dataset: add --append to merge the "
                             "manifest as a batch too (a full ingest replaces the dataset: leave the ids out of "
                             "its manifest instead)")
    with dataset_lock(settings, name, "ingest"):
        if append or remove is not None:
            return _append(Path(manifest).resolve() if manifest else None, name, settings,
                           _ids(remove) if remove is not None else [])
        return _full(Path(manifest).resolve(), name, settings)  # type: ignore[arg-type]


def _copy_in(root: Path, rel: str, target: Path) -> None:
    """Copy the file ``rel`` of a manifest's folder ``root`` to ``target``: the one place a source file is read into
    the raw folder."""
    shutil.copyfile(root / rel, target)


def _carry(source: Path, target: Path) -> None:
    """A file of the current version into the new one: a hard link (no bytes copied, and the same inode and mtime,
    so DVC does not hash it again), a copy across file systems or where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _ids(path: Path) -> list[str]:
    """The ids of a remove list: one per line, blank lines and ``#`` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read the ids to remove from {path}: {e}") from e
    return list(dict.fromkeys(s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")))


def _previous(dest: Path) -> str | None:
    try:
        return versioning.read_version(dest)
    except DatasetNotFoundError:
        return None


def _full(manifest: Path, name: str, settings: Settings) -> dict[str, Any]:
    frame = read_manifest(manifest)  # structural problems stop here, before anything is copied
    root = manifest.parent
    dest = settings.layout(name).raw
    previous = _previous(dest)
    copied = 0
    not_copied: dict[str, dict[str, str]] = {}
    with atomic_dir(dest) as tmp:
        shutil.copyfile(manifest, tmp / "manifest.csv")
        files = sorted(set(frame["path"]) - {""})
        for rel in progress(files, desc=f"ingest {name}", unit="files"):
            problem = path_problem(rel, root)
            if problem is not None:
                not_copied[rel] = {"reason": problem.reason, "message": problem.message}
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_in(root, rel, target)
            copied += 1
        # why a file is absent from the raw copy (e.g. a symlink out of the source root): validate reports it
        write_json(tmp / NOT_COPIED, not_copied)
    version = versioning.track(settings.home, dest)
    log.info("ingest %s: %d rows, %d files, data version %s", name, len(frame), copied, version[:12])
    return {"dataset": name, "mode": "full", "rows": len(frame), "files": copied, "copied": copied, "linked": 0,
            "not_copied": len(not_copied), "data_version": version, "previous_version": previous, "path": str(dest)}


def _append(manifest: Path | None, name: str, settings: Settings, remove: list[str]) -> dict[str, Any]:
    dest = settings.layout(name).raw
    current = (dest / "manifest.csv").is_file()
    previous = _previous(dest)
    if not current and previous is not None:
        raise DatasetNotFoundError(f"{dest} is tracked (data version {previous[:12]}) but not checked out: run "
                                   f"`dvc checkout {dest.relative_to(settings.home)}.dvc` (or `dvc pull`) first")
    if not current and manifest is None:
        raise DatasetNotFoundError(f"dataset {name!r} has no ingested version to remove ids from: run "
                                   f"`mmr ingest MANIFEST --name {name}` first")
    batch = read_manifest(manifest) if manifest is not None else None  # structural problems stop here
    base = read_manifest(dest / "manifest.csv") if current else None
    done = json.loads((dest / NOT_COPIED).read_text(encoding="utf-8")) if (dest / NOT_COPIED).is_file() else {}
    plan = plan_merge(name, base, dest if current else None, done, batch, manifest.parent if manifest else None,
                      remove)
    if not plan.changed and plan.unknown and manifest is None:
        raise IngestConflict(f"nothing changed: none of the {len(plan.unknown)} id(s) to remove is in dataset "
                             f"{name!r} ({', '.join(map(repr, plan.unknown[:SHOWN]))}); removed earlier, or another "
                             "dataset's?")
    if plan.rows.empty:
        raise IngestConflict(f"dataset {name!r} would have no rows left: remove it as a whole instead")
    version = previous
    if plan.changed or not current:
        _write(plan, dest, manifest.parent if manifest else dest, name)
        version = versioning.track(settings.home, dest)
    result = _summary(plan, name, dest, version or "", previous)
    _log(result, plan)
    return result


def _write(plan: MergePlan, dest: Path, root: Path, name: str) -> None:
    """The merged version into a new folder that replaces ``dest`` whole: current files linked, the batch's copied."""
    made: set[Path] = set()
    with atomic_dir(dest) as tmp:
        write_manifest(plan.rows, tmp / "manifest.csv")
        work = [(True, rel) for rel in plan.carry] + [(False, rel) for rel in plan.copy]
        for carried, rel in progress(work, desc=f"ingest {name}", unit="files"):
            target = tmp / rel
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            if carried:
                _carry(dest / rel, target)
            else:
                _copy_in(root, rel, target)
        write_json(tmp / NOT_COPIED, plan.not_copied)


def _summary(plan: MergePlan, name: str, dest: Path, version: str, previous: str | None) -> dict[str, Any]:
    return {"dataset": name, "mode": "append", "rows": len(plan.rows), "files": len(plan.carry) + len(plan.copy),
            "copied": len(plan.copy), "linked": len(plan.carry), "not_copied": len(plan.not_copied),
            "added": len(plan.added), "replaced": len(plan.replaced), "removed": len(plan.removed),
            "unchanged": plan.unchanged, "unknown": len(plan.unknown), "added_ids": plan.added[:SHOWN],
            "replaced_ids": plan.replaced[:SHOWN], "removed_ids": plan.removed[:SHOWN],
            "unknown_ids": plan.unknown[:SHOWN], "changed": version != previous, "data_version": version,
            "previous_version": previous, "path": str(dest)}


def _log(result: dict[str, Any], plan: MergePlan) -> None:
    def some(ids: list[str]) -> str:
        return f" ({', '.join(ids[:SHOWN])}{', ...' if len(ids) > SHOWN else ''})" if ids else ""

    log.info("ingest %s (append): %d added%s, %d replaced%s, %d removed%s, %d unchanged; %d rows, %d files (%d "
             "linked, %d copied), data version %s -> %s", result["dataset"], len(plan.added), some(plan.added),
             len(plan.replaced), some(plan.replaced), len(plan.removed), some(plan.removed), plan.unchanged,
             result["rows"], result["files"], result["linked"], result["copied"],
             (result["previous_version"] or "none")[:12], result["data_version"][:12])
    if plan.unknown:
        log.warning("ingest %s: %d id(s) to remove are not in the dataset%s", result["dataset"], len(plan.unknown),
                    some(plan.unknown))
