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


def recorded_files(home: Path, path: Path) -> dict[str, str] | None:
    """The md5 of every file of the tracked folder ``path`` as its data version recorded it (relative POSIX path ->
    hex md5), read from the version's ``.dir`` object in the DVC cache. ``None`` for a version hashed the legacy
    way (DVC 2's ``md5-dos2unix``, not the bytes' md5). DVC itself trusts a file's inode, mtime and size; these
    digests let a stage compare the actual bytes. Raises :class:`VersioningError` when the object is not in the
    cache (``dvc fetch`` or `mmr ingest` again)."""
    import yaml

    dvc_file = path.with_name(path.name + ".dvc")
    if not dvc_file.is_file():
        raise DatasetNotFoundError(f"{path} is not DVC-tracked ({dvc_file.name} missing): run `mmr ingest` first")
    out = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs", [{}])[0]
    if out.get("hash") != "md5":
        return None
    oid = str(out.get("md5", ""))
    if not oid.endswith(".dir"):
        raise VersioningError(f"{dvc_file} does not track a folder (md5 {oid!r})")
    cache = _cache_dir(home)
    obj = cache / "files" / "md5" / oid[:2] / oid[2:]
    if not obj.is_file():
        raise VersioningError(f"the DVC cache {cache} lacks {oid} (the file list of {path.name}'s data version): run "
                              f"`dvc fetch {dvc_file.relative_to(home)}` or `mmr ingest` again")
    return {str(e["relpath"]): str(e["md5"]) for e in json.loads(obj.read_text(encoding="utf-8"))}


def _cache_dir(home: Path) -> Path:
    """The DVC cache folder of ``home``: ``.dvc/cache`` unless ``cache.dir`` is configured (then DVC says where)."""
    configured = any("[cache]" in p.read_text(encoding="utf-8") for p in (home / ".dvc/config",
                     home / ".dvc/config.local") if p.is_file())
    if not configured:
        return home / ".dvc" / "cache"
    return Path(_dvc(home, "cache", "dir").strip())


def is_modified(home: Path, path: Path) -> bool:
    """True when the folder changed since it was last tracked (``dvc status``)."""
    out = _dvc(home, "status", "--json", str(path.relative_to(home)) + ".dvc")
    return bool(json.loads(out or "{}"))


def checkout(home: Path, path: Path, version: str) -> None:
    """Put data version ``version`` of a tracked folder back in place (``dvc checkout`` from the local DVC cache):
    ``<path>.dvc`` is rewritten to name it, then the folder is made to match. Every version ``track`` made is in the
    cache, so it can be checked out and rebuilt; in a git checkout, ``git checkout REV <path>.dvc`` followed by
    ``dvc checkout`` does the same. Raises :class:`VersioningError`, with nothing changed, when the version is not
    in the local cache (DVC would delete the folder) or the folder has changes that were never tracked."""
    import yaml

    cache = Path(_dvc(home, "cache", "dir").strip())
    cache = cache if cache.is_absolute() else home / cache
    if not (cache / "files" / "md5" / version[:2] / f"{version[2:]}.dir").is_file():
        raise VersioningError(f"data version {version!r} of {path.name} is not in the DVC cache {cache} (a version "
                              "made elsewhere: `dvc fetch` it first)")
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file() and is_modified(home, path):
        raise VersioningError(f"{path} has changes that were never tracked: `mmr ingest` them (or `dvc add`) "
                              "before checking out another version")
    meta = {"outs": [{"md5": f"{version}.dir", "hash": "md5", "path": path.name}]}
    previous = dvc_file.read_text(encoding="utf-8") if dvc_file.is_file() else None
    dvc_file.write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    try:
        _dvc(home, "checkout", str(dvc_file.relative_to(home)))
    except VersioningError:
        if previous is not None:
            dvc_file.write_text(previous, encoding="utf-8")
        raise
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
