"""``ingest``: register a dataset: copy its manifest and media under ``data/raw/<name>/`` and DVC-track it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from mmretrieval.backends import versioning
from mmretrieval.core.io import atomic_dir, write_json
from mmretrieval.core.layout import NOT_COPIED
from mmretrieval.core.schema import check_dataset_name, read_manifest
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.media.files import copy_inside, path_problem

log = logging.getLogger(__name__)


def ingest(manifest: Path, name: str, settings: Settings | None = None) -> dict[str, Any]:
    """Copy the manifest and every file it names safely (relative, inside its folder) and ``dvc add`` the folder.

    Rows whose file is unsafe or missing are kept in the manifest: ``validate`` quarantines them with the reason.
    """
    from tqdm import tqdm

    settings = settings or get_settings()
    check_dataset_name(name)
    manifest = Path(manifest).resolve()
    frame = read_manifest(manifest)  # structural problems stop here, before anything is copied
    root = manifest.parent
    dest = settings.layout(name).raw
    copied = 0
    not_copied: dict[str, dict[str, str]] = {}
    with atomic_dir(dest) as tmp:
        shutil.copyfile(manifest, tmp / "manifest.csv")
        files = sorted(set(frame["path"]) - {""})
        for rel in tqdm(files, desc=f"ingest {name}", unit="file", leave=False, disable=None):
            problem = path_problem(rel, root)
            if problem is not None:
                not_copied[rel] = {"reason": problem.reason, "message": problem.message}
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_inside(root, rel, target)  # no link followed: a folder swapped for one is refused
            copied += 1
        # why a file is absent from the raw copy (e.g. a symlink out of the source root): validate reports it
        write_json(tmp / NOT_COPIED, not_copied)
    version = versioning.track(settings.home, dest)
    log.info("ingest %s: %d rows, %d files, data version %s", name, len(frame), copied, version[:12])
    return {"dataset": name, "rows": len(frame), "files": copied, "not_copied": len(not_copied),
            "data_version": version, "path": str(dest)}
