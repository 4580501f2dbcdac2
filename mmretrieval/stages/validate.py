"""Stage ``validate``: the GX suite on the manifest plus media checks, one verdict per row.

Output ``data/validated/<dataset>/``: ``rows.parquet`` (every input row, splits assigned, ``reason``/``message``
empty for good rows), ``report.json`` and ``data_docs.html`` (Great Expectations' rendering of the suite's result,
self-contained and offline, with the dataset, its data version, every expectation and the media checks:
:mod:`mmretrieval.backends.data_docs`). Hard failures (a duplicate id, a missing column, an id the index cannot hold,
no usable row) raise :class:`ValidationFailed` after writing only ``data_docs.html`` and a ``report.json`` with
``"status": "failed"``: no ``rows.parquet``, so no later stage runs on the data. The page's path is logged (the
Airflow task log shows it) and returned as ``data_docs``; training logs the page as an MLflow artifact.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

from mmretrieval.backends import data_docs, versioning
from mmretrieval.core.cache import ItemCache, fingerprint
from mmretrieval.core.contracts import ValidateResult
from mmretrieval.core.errors import DataChangedError, ValidationFailed
from mmretrieval.core.io import atomic_dir, sha256_file, write_json
from mmretrieval.core.layout import NOT_COPIED
from mmretrieval.core.params import Params
from mmretrieval.core.progress import progress
from mmretrieval.core.schema import (
    JSON_MAX_BYTES,
    MESSAGE,
    METADATA,
    METADATA_RESERVE,
    REASON,
    VARCHAR_LIMITS,
    Modality,
    fill_splits,
    read_manifest,
    row_dicts,
    split_captions,
)
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.media.audio import audio_problem
from mmretrieval.media.files import Problem, path_problem
from mmretrieval.media.image import image_problem
from mmretrieval.media.text import normalize_captions

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.backends.expectations import SuiteResult
    from mmretrieval.core.digests import FileDigests
    from mmretrieval.core.layout import Layout

log = logging.getLogger(__name__)

# Bump when a media check changes what it decides: every cached verdict is then made anew.
CHECKS_VERSION = 2  # 2: blank pictures, representative frames, measured WebM durations (issue 25)


def _check_ids(df: pd.DataFrame, dataset: str) -> None:
    """Ids are Milvus primary keys: each must fit :data:`~mmretrieval.core.schema.VARCHAR_LIMITS` ``["id"]`` UTF-8
    bytes and hold no NUL. A bad id stops the run (an id names an item everywhere; it is not quietly dropped)."""
    limit = VARCHAR_LIMITS["id"]
    bad = [(int(i) + 2, str(v)) for i, v in df["id"].items() if len(str(v).encode("utf-8")) > limit or "\x00" in v]
    if bad:
        shown = ", ".join(f"row {r}: {v[:40]!r}{'…' if len(v) > 40 else ''} ({len(v.encode('utf-8'))} bytes"
                          f"{', NUL' if chr(0) in v else ''})" for r, v in bad[:5])
        raise ValidationFailed(f"dataset {dataset!r}: {len(bad)} id(s) do not fit the index's {limit}-byte primary "
                               f"key or hold a NUL character: {shown}; shorten them in the manifest")


def limit_problem(row: Mapping[str, Any]) -> Problem | None:
    """A row whose fields would not fit the collection schema (the index field limits of
    :mod:`mmretrieval.core.schema`): a string field longer than its limit in UTF-8 bytes, a NUL character (not in
    ``text``: clean removes control characters from captions, :mod:`mmretrieval.media.text`), metadata JSON above
    the JSON field's limit (less the room publish needs for what it adds)."""
    for column in ("path", "label", "text", "group", "source"):
        value = str(row[column])
        if "\x00" in value and column != "text":
            return Problem("nul_character", f"{column} contains a NUL character")
        limit = VARCHAR_LIMITS.get(column)
        size = len(value.encode("utf-8"))
        if limit is not None and size > limit:
            # text: the reason clean gives a caption above validate.max_caption_chars (captions merged from
            # duplicates later are cut in the index's display copy, never in training)
            reason = "caption_too_long" if column == "text" else "field_too_long"
            return Problem(reason, f"{column} is {size} bytes, above the index's {limit}-byte limit")
    metadata = str(row[METADATA])
    if "\\u0000" in metadata or "\x00" in metadata:
        return Problem("nul_character", "an extra column's value contains a NUL character")
    size = len(metadata.encode("utf-8"))
    if size > JSON_MAX_BYTES - METADATA_RESERVE:
        return Problem("metadata_too_large", f"the extra columns make {size} bytes of metadata JSON, above the "
                       f"index's limit of {JSON_MAX_BYTES - METADATA_RESERVE} (JSON field {JSON_MAX_BYTES} bytes, "
                       f"{METADATA_RESERVE} kept for publish)")
    return None


def run(dataset: str, settings: Settings | None = None) -> ValidateResult:
    """Validate the raw manifest of ``dataset`` and its files into ``data/validated/<dataset>/`` (replaced whole,
    atomically). Raises :class:`ValidationFailed` for raw data changed since its version, or a hard failure."""
    settings = settings or get_settings()
    params = settings.params_for(dataset)
    started = time.monotonic()
    layout = settings.layout(dataset)
    raw = layout.raw
    data_version = versioning.read_version(raw)
    if versioning.is_modified(settings.home, raw):
        raise ValidationFailed(
            f"{raw} changed since it was tracked (data version {data_version[:12]}): "
            f"run `mmr ingest` again (or `dvc add {raw.relative_to(settings.home)}`) so the change gets a version"
        )
    with settings.file_digests() as memo:
        digests = raw_digests(settings.home, raw, data_version, memo)
    df = read_manifest(raw / "manifest.csv")

    from mmretrieval.backends.expectations import run_suite

    suite = run_suite(df, dataset, params.validate.labels)
    if suite.hard:
        _fail(layout, dataset, data_version, suite, f"dataset {dataset!r}: " + "; ".join(suite.hard))
    try:
        _check_ids(df, dataset)
    except ValidationFailed as e:
        _fail(layout, dataset, data_version, suite, str(e))
    checks = MediaChecks(layout.item_cache, params, digests, data_version)
    checks.caches[Modality.IMAGE.value].sweep()  # temporary files of killed writers (one folder for all kinds)
    for cache in checks.caches.values():
        cache.open_pack(dataset)
    reasons = _row_problems(df, raw, dict(suite.row_reasons), checks, dataset)
    for cache in checks.caches.values():  # the verdicts this version used, one file per modality for the next run
        cache.save_pack()
    rows, reassigned = _assign_splits(df, params, dataset)
    # the sha256 of every file checked (the manifest's own value kept where no file was read: quarantined rows)
    rows["sha256"] = [checks.found.get(i, rows.at[i, "sha256"]) for i in range(len(rows))]
    rows[REASON] = [reasons.get(i, ("", ""))[0] for i in range(len(rows))]
    rows[MESSAGE] = [reasons.get(i, ("", ""))[1] for i in range(len(rows))]
    bad = rows[REASON] != ""
    by_kind = dict(Counter(zip(rows.loc[bad, "modality"], rows.loc[bad, REASON], strict=True)))
    if bad.all():
        first = rows.loc[bad, MESSAGE].head(3).tolist()
        _fail(layout, dataset, data_version, suite,
              f"dataset {dataset!r}: none of its {len(rows)} rows is usable, e.g. {first}", by_kind, len(rows))
    report = {
        "dataset": dataset,
        "data_version": data_version,
        "status": "passed",
        "rows": len(rows),
        "valid": int((~bad).sum()),
        "quarantine": int(bad.sum()),
        "reasons": dict(Counter(rows.loc[bad, REASON])),
        "splits": {k: int(v) for k, v in rows.loc[~bad, "split"].value_counts().items()},
        "splits_reassigned": reassigned,
        "expectations": suite.summary,
        "first_problems": rows.loc[bad, ["id", REASON, MESSAGE]].head(20).to_dict("records"),
        **checks.counts(),
        **memo.counts(),
        "seconds": round(time.monotonic() - started, 2),
    }
    page = data_docs.render(suite.html, data_docs.summary_html(
        dataset, data_version, "passed", [], suite.summary, by_kind, len(rows), report["valid"], media_checked=True))
    with atomic_dir(layout.validated) as tmp:  # files named as in the layout, the folder renamed into place
        rows.to_parquet(tmp / layout.validated_rows.name, index=False)
        write_json(tmp / layout.validation_report.name, report)
        (tmp / layout.data_docs.name).write_text(page, encoding="utf-8")
    log.info("validate %s: %d rows, %d valid, %d to quarantine %s; media checks: %d reused, %d computed", dataset,
             len(rows), report["valid"], report["quarantine"], report["reasons"], report["reused"], report["computed"])
    log.info("validate %s: data docs %s", dataset, layout.data_docs.resolve().as_uri())
    return ValidateResult(dataset, data_version, report["rows"], report["valid"], report["quarantine"],
                          report["reasons"], str(layout.validation_report), str(layout.data_docs),
                          report["reused"], report["computed"])


def _row_problems(df: pd.DataFrame, raw: Path, reasons: dict[int, tuple[str, str]], checks: MediaChecks,
                  dataset: str) -> dict[int, tuple[str, str]]:
    """``reasons`` (row -> (reason, message): the suite's verdicts) completed with the first problem of each other
    row: a field the index cannot hold (:func:`limit_problem`, every row first), then an empty text or its file
    (:func:`media_problem`)."""
    for i, row in row_dicts(df):
        if i not in reasons and (limit := limit_problem(row)) is not None:
            reasons[int(i)] = (limit.reason, f"row {int(i) + 2} ({row['id']}): {limit.message}")
    not_copied_file = raw / NOT_COPIED
    not_copied = json.loads(not_copied_file.read_text(encoding="utf-8")) if not_copied_file.is_file() else {}
    for i, row in progress(row_dicts(df), f"validate {dataset}", total=len(df)):
        if i in reasons:
            continue
        if row["modality"] == Modality.TEXT.value:
            if not normalize_captions(split_captions(row["text"])):  # invisible-only text is empty too
                reasons[int(i)] = ("empty_text", "a text item needs text with something visible in it")
            continue
        problem = media_problem(row, raw, not_copied, checks, int(i))
        if problem is not None:
            reasons[int(i)] = (problem.reason, f"row {int(i) + 2} ({row['id']}): {problem.message}")
    return reasons


def media_problem(row: Mapping[str, Any], raw: Path, not_copied: dict[str, dict[str, str]], checks: MediaChecks,
                  index: int) -> Problem | None:
    """The first problem of a media row's file under ``raw``: its path (for a missing file that ingest did not copy,
    why: ``not_copied``, path -> reason and message; a name in another Unicode form is reported, not taken), its
    bytes against the manifest's ``sha256`` when given, then the checks of its modality (decoding, size, duration,
    frames; :class:`MediaChecks`, cached by content). Records the file's sha256 in ``checks.found[index]``."""
    problem = path_problem(row["path"], raw, match_forms=False)
    if problem is not None and problem.reason == "missing_file" and row["path"] in not_copied:
        seen = not_copied[row["path"]]
        problem = Problem(seen["reason"], f"at ingest: {seen['message']}")
    if problem is not None:
        return problem
    path = raw / row["path"]
    digest = checks.digest(row["path"], path)
    checks.found[index] = digest
    if str(row["sha256"]).strip():
        problem = hash_problem(path, str(row["sha256"]).strip(), digest)
    return problem if problem is not None else checks.verdict(row, path, digest)


class MediaChecks:
    """The modality checks of media files, cached by content (:class:`~mmretrieval.core.cache.ItemCache` kind
    ``validate-media``: key = the file's sha256 and name + exactly the settings its modality's checks read +
    :data:`CHECKS_VERSION`; entry = the verdict as JSON). ``digests`` are the files' sha256 as read against the data
    version (:func:`raw_digests`); ``found`` collects each row's (row index -> sha256)."""

    def __init__(self, root: Path, params: Params, digests: dict[str, str], data_version: str) -> None:
        v = params.validate
        common = {"max_file_bytes": v.max_file_bytes, "code": CHECKS_VERSION}
        decides = {
            Modality.IMAGE.value: {"max_image_pixels": v.max_image_pixels, "min_image_side": v.min_image_side},
            Modality.AUDIO.value: {k: getattr(v, k) for k in ("max_audio_seconds", "min_audio_seconds",
                                                               "max_audio_channels", "clipped_share")},
            Modality.VIDEO.value: {"max_video_seconds": v.max_video_seconds, "max_video_pixels": v.max_video_pixels,
                                   "frames": params.model.video_frames},
        }
        self.caches = {m: ItemCache(root, "validate-media", fingerprint(m, common | d), ".json")
                       for m, d in decides.items()}
        self.params, self.digests, self.data_version = params, digests, data_version
        self.found: dict[int, str] = {}

    def digest(self, rel: str, path: Path) -> str:
        """The sha256 of ``rel`` read against its data version; a file outside the version is a change."""
        rel = PurePosixPath(rel).as_posix()  # "./a//b.png" is DVC's "a/b.png"
        if rel not in self.digests:
            raise DataChangedError(f"{path} is not part of data version {self.data_version[:12]} (added after "
                                   "`mmr ingest`): run `mmr ingest` again so the change gets a data version")
        return self.digests[rel]

    def verdict(self, row: Mapping[str, Any], path: Path, digest: str) -> Problem | None:
        """The modality checks' verdict on ``path`` (whose bytes hash to ``digest``): reused when cached; else
        computed, the file hashed again (a file rewritten during its checks is a change, not a verdict) and kept."""
        cache = self.caches.get(row["modality"])
        if cache is None:
            return None
        key = cache.key(f"{digest}:{path.name}")  # messages name the file
        found = cache.recall(key)  # the dataset's pack, else the entry's file (pruned or damaged: a miss)
        if found is not None and isinstance(found.get("reason"), str) and isinstance(found.get("message"), str):
            cache.reused += 1
            return Problem(found["reason"], found["message"]) if found["reason"] else None
        problem = modality_problem(row["modality"], path, self.params)
        if (now := sha256_file(path)) != digest:
            raise DataChangedError.of(path, f"sha256 {digest}", f"sha256 {now}", self.data_version, "ingest")
        verdict = {"reason": problem.reason if problem else "", "message": problem.message if problem else ""}
        cache.remember(key, verdict)
        cache.computed += 1
        return problem

    def counts(self) -> dict[str, int]:
        """``{"reused": n, "computed": m}`` over every modality."""
        return {"reused": sum(c.reused for c in self.caches.values()),
                "computed": sum(c.computed for c in self.caches.values())}


def modality_problem(modality: str, path: Path, params: Params) -> Problem | None:
    """The checks of one media file by its modality (decoding, size, duration, frames)."""
    if modality == Modality.IMAGE.value:
        return image_problem(path, params.validate)
    if modality == Modality.AUDIO.value:
        return audio_problem(path, params.validate)
    from mmretrieval.media.video import video_problem

    return video_problem(path, params.validate, params.model.video_frames)


def raw_digests(home: Path, raw: Path, data_version: str, memo: FileDigests) -> dict[str, str]:
    """The sha256 of every file of the raw folder (relative POSIX path -> hex), its md5 compared with the one its
    data version recorded (:func:`~mmretrieval.backends.versioning.recorded_files`). A file is read once, and again
    only when its inode, size or mtime moved (``memo``, :mod:`mmretrieval.core.digests`; every time under
    ``MMR_REHASH=1``). A file the memo has not seen (every file of a full ingest: new inodes) is read, so a rewrite
    that kept the size and put the mtime back (which DVC trusts) is caught there. Raises :class:`DataChangedError`
    naming the first changed or deleted file."""
    recorded = versioning.recorded_files(home, raw)
    if recorded is None:  # a legacy (DVC 2) version: no byte-exact md5 to compare with
        log.warning("validate: %s was versioned with DVC's legacy md5; its bytes are hashed but not compared", raw)
        recorded = {p.relative_to(raw).as_posix(): "" for p in sorted(raw.rglob("*")) if p.is_file()}
    digests: dict[str, str] = {}
    for rel, md5 in progress(sorted(recorded.items()), f"hash {raw.name}", unit="files"):
        try:
            found = memo.of(raw / rel)
        except FileNotFoundError:
            raise DataChangedError.of(raw / rel, f"md5 {md5}", None, data_version, "ingest") from None
        if md5 and found["md5"] != md5:
            raise DataChangedError.of(raw / rel, f"md5 {md5}", f"md5 {found['md5']}", data_version, "ingest")
        digests[rel] = found["sha256"]
    return digests


def _assign_splits(df: pd.DataFrame, params: Params, dataset: str) -> tuple[pd.DataFrame, bool]:
    """The rows with their splits filled from the ratios in ``params.split``, and whether every split was assigned
    anew (``split.reassign_without_train`` and no train row; invalid split values are kept for their verdict)."""
    reassigned = bool(params.split.reassign_without_train and not (df["split"] == "train").any())
    if reassigned and set(df["split"]) == {""}:  # the documented case: no splits given, a hash assigns them
        log.info("validate %s: no split column values; assigning splits from the ratios in params.yaml", dataset)
    elif reassigned:
        log.warning("validate %s: the manifest has no train rows (splits %s); assigning splits from the ratios in "
                    "params.yaml instead (split.reassign_without_train)", dataset, sorted(set(df["split"])))
    rows = fill_splits(df.assign(split="") if reassigned else df, params.split)
    if reassigned:  # keep the verdict on invalid split values
        rows.loc[~df["split"].isin(["train", "val", "test", ""]), "split"] = df["split"]
    return rows, reassigned


def hash_problem(path: Path, expected: str, actual: str) -> Problem | None:
    """The manifest's ``sha256`` for a file: a 64-digit hex SHA-256 that must match ``actual``, the file's."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
        return Problem("sha256_mismatch", f"sha256 {expected[:80]!r} is not a SHA-256 digest (64 hex digits)")
    if actual != expected.lower():
        return Problem("sha256_mismatch", f"file {path.name} has sha256 {actual[:16]}…, the manifest expects "
                                          f"{expected.lower()[:16]}…: changed or corrupted since the manifest was made")
    return None


def _fail(layout: Layout, dataset: str, data_version: str, suite: SuiteResult, message: str,
          reasons: dict[tuple[str, str], int] | None = None, rows: int | None = None) -> NoReturn:
    """Replace the validated folder with the failed validation's data docs page and report (no rows: nothing
    downstream runs on this data), log the page's address and raise :class:`ValidationFailed` with ``message``."""
    page = data_docs.render(suite.html, data_docs.summary_html(
        dataset, data_version, "failed", [message], suite.summary, reasons or {}, rows, 0 if rows else None,
        media_checked=reasons is not None))
    totals: Counter[str] = Counter()
    for (_, reason), n in (reasons or {}).items():
        totals[reason] += n
    report = {"dataset": dataset, "data_version": data_version, "status": "failed", "errors": [message],
              "expectations": suite.summary, "reasons": dict(totals)}
    with atomic_dir(layout.validated) as tmp:
        write_json(tmp / layout.validation_report.name, report)
        (tmp / layout.data_docs.name).write_text(page, encoding="utf-8")
    log.error("validate %s failed: data docs %s", dataset, layout.data_docs.resolve().as_uri())
    raise ValidationFailed(f"{message} (data docs: {layout.data_docs})")
