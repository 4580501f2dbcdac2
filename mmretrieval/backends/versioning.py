"""The only module that talks to DVC: track a dataset's raw folder and read its version.

The data version of a dataset is the DVC hash of ``data/raw/<dataset>/`` (the ``md5`` of its ``.dvc`` file, without
``.dir``); every later artefact records it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mmretrieval.core.errors import DatasetNotFoundError, VersioningError


def _dvc(home: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        detail = " | ".join(lines[-3:]) or f"exit {proc.returncode}"
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {home}: {detail}")
    return proc.stdout


def ensure_repo(home: Path) -> None:
    """Make ``home`` a DVC repository if it is not one (``--no-scm`` outside git)."""
    if (home / ".dvc").is_dir():
        return
    _dvc(home, "init", "-q", *(() if (home / ".git").exists() else ("--no-scm",)))


def track(home: Path, path: Path) -> str:
    """``dvc add`` a folder and return its data version."""
    ensure_repo(home)
    _dvc(home, "add", str(path.relative_to(home)))
    return read_version(path)


def read_version(path: Path) -> str:
    """The data version recorded in ``<path>.dvc``."""
    import yaml

    dvc_file = path.with_name(path.name + ".dvc")
    if not dvc_file.is_file():
        raise DatasetNotFoundError(f"{path} is not DVC-tracked ({dvc_file.name} missing): run `mmr ingest` first")
    meta = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    try:
        md5 = str(meta["outs"][0]["md5"])
    except (KeyError, IndexError, TypeError) as e:
        raise VersioningError(f"{dvc_file} has no outs[0].md5: {meta!r}") from e
    return md5.removesuffix(".dir")


def is_modified(home: Path, path: Path) -> bool:
    """True when the folder changed since it was last tracked (``dvc status``)."""
    out = _dvc(home, "status", "--json", str(path.relative_to(home)) + ".dvc")
    return bool(json.loads(out or "{}"))


def checkout(home: Path, path: Path, version: str) -> None:
    """Put data version ``version`` of a tracked folder back in place (``dvc checkout`` from the local DVC cache):
    ``<path>.dvc`` is rewritten to name it, then the folder is made to match. Every version ``track`` made is in the
    cache, so it can be checked out and rebuilt; in a git checkout, ``git checkout REV <path>.dvc`` followed by
    ``dvc checkout`` does the same. Raises :class:`VersioningError` when the version is not in the cache."""
    import yaml

    dvc_file = path.with_name(path.name + ".dvc")
    meta = {"outs": [{"md5": f"{version}.dir", "hash": "md5", "path": path.name}]}
    previous = dvc_file.read_text(encoding="utf-8") if dvc_file.is_file() else None
    dvc_file.write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    try:
        _dvc(home, "checkout", "--force", str(dvc_file.relative_to(home)))
    except VersioningError:
        if previous is not None:
            dvc_file.write_text(previous, encoding="utf-8")
        raise
