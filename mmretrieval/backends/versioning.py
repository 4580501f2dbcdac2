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


REMOTE = "mmr"  # the DVC remote of the shared data store, kept in .dvc/config.local (never a tracked file)


def use_remote(home: Path, data_url: str) -> None:
    """Point DVC's default remote ``mmr`` of ``home`` at ``<data_url>/dvc`` (the shared store's bucket), with the S3
    endpoint of ``AWS_ENDPOINT_URL`` when set, in ``.dvc/config.local`` (never a tracked file; written without a DVC
    process when there is none yet, else changed through ``dvc remote``). Credentials stay in the environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), never in a config file."""
    ensure_repo(home)
    lines = ["[core]", f"    remote = {REMOTE}", f"['remote \"{REMOTE}\"']", f"    url = {data_url.rstrip('/')}/dvc"]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and data_url.startswith("s3://"):
        lines.append(f"    endpointurl = {endpoint}")
    config = home / ".dvc" / "config.local"
    text = "\n".join(lines) + "\n"
    if not config.is_file():  # the usual case, a worker's fresh MMR_HOME: written directly (DVC's INI format)
        tmp = config.with_name(f".config.local.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, config)
    elif config.read_text(encoding="utf-8") != text:  # someone's own local config: changed through DVC, kept
        _dvc(home, "remote", "add", "--local", "--force", "--default", REMOTE, f"{data_url.rstrip('/')}/dvc")
        if endpoint and data_url.startswith("s3://"):
            _dvc(home, "remote", "modify", "--local", REMOTE, "endpointurl", endpoint)


def push(home: Path, path: Path) -> None:
    """``dvc push`` the data version of the tracked folder ``path`` to the remote set by :func:`use_remote`."""
    _dvc(home, "push", "-q", "-r", REMOTE, str(path.relative_to(home)) + ".dvc")


def pull(home: Path, path: Path) -> None:
    """``dvc pull`` exactly the data version ``<path>.dvc`` names into ``path`` (fetch + checkout, forced over a
    local copy of another version). Raises :class:`VersioningError` when the remote lacks it."""
    _dvc(home, "pull", "-q", "--force", "-r", REMOTE, str(path.relative_to(home)) + ".dvc")
