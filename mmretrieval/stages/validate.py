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
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from mmretrieval.backends import data_docs, versioning
from mmretrieval.core.contracts import ValidateResult
from mmretrieval.core.errors import ValidationFailed
from mmretrieval.core.io import atomic_dir, write_json
from mmretrieval.core.layout import NOT_COPIED
from mmretrieval.core.params import Params
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
    from mmretrieval.core.layout import Layout

log = logging.getLogger(__name__)


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


def limit_problem(row: pd.Series) -> Problem | None:
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
    df = read_manifest(raw / "manifest.csv")

    from mmretrieval.backends.expectations import run_suite

    suite = run_suite(df, dataset, params.validate.labels)
    if suite.hard:
        _fail(layout, dataset, data_version, suite, f"dataset {dataset!r}: " + "; ".join(suite.hard))
    try:
        _check_ids(df, dataset)
    except ValidationFailed as e:
        _fail(layout, dataset, data_version, suite, str(e))
    reasons = _row_problems(df, raw, params, dict(suite.row_reasons))
    rows, reassigned = _assign_splits(df, params, dataset)
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
        "seconds": round(time.monotonic() - started, 2),
    }
    page = data_docs.render(suite.html, data_docs.summary_html(
        dataset, data_version, "passed", [], suite.summary, by_kind, len(rows), report["valid"], media_checked=True))
    with atomic_dir(layout.validated) as tmp:  # files named as in the layout, the folder renamed into place
        rows.to_parquet(tmp / layout.validated_rows.name, index=False)
        write_json(tmp / layout.validation_report.name, report)
        (tmp / layout.data_docs.name).write_text(page, encoding="utf-8")
    log.info("validate %s: %d rows, %d valid, %d to quarantine %s", dataset, len(rows), report["valid"],
             report["quarantine"], report["reasons"])
    log.info("validate %s: data docs %s", dataset, layout.data_docs.resolve().as_uri())
    return ValidateResult(dataset, data_version, report["rows"], report["valid"], report["quarantine"],
                          report["reasons"], str(layout.validation_report), str(layout.data_docs))


def _row_problems(df: pd.DataFrame, raw: Path, params: Params, reasons: dict[int, tuple[str, str]]
                  ) -> dict[int, tuple[str, str]]:
    """``reasons`` (row -> (reason, message): the suite's verdicts) completed with the first problem of each other
    row: a field the index cannot hold (:func:`limit_problem`, every row first), then an empty text or its file
    (:func:`media_problem`)."""
    for i, row in df.iterrows():
        if i not in reasons and (limit := limit_problem(row)) is not None:
            reasons[int(i)] = (limit.reason, f"row {int(i) + 2} ({row['id']}): {limit.message}")
    not_copied_file = raw / NOT_COPIED
    not_copied = json.loads(not_copied_file.read_text(encoding="utf-8")) if not_copied_file.is_file() else {}
    for i, row in df.iterrows():
        if i in reasons:
            continue
        if row["modality"] == Modality.TEXT.value:
            if not normalize_captions(split_captions(row["text"])):  # invisible-only text is empty too
                reasons[int(i)] = ("empty_text", "a text item needs text with something visible in it")
            continue
        problem = media_problem(row, raw, params, not_copied)
        if problem is not None:
            reasons[int(i)] = (problem.reason, f"row {int(i) + 2} ({row['id']}): {problem.message}")
    return reasons


def media_problem(row: pd.Series, raw: Path, params: Params, not_copied: dict[str, dict[str, str]]) -> Problem | None:
    """The first problem of a media row's file under ``raw``: its path (for a missing file that ingest did not copy,
    why: ``not_copied``, path -> reason and message), its bytes against the manifest's ``sha256`` when given, then
    the checks of its modality (decoding, size, duration, frames)."""
    path = raw / row["path"]
    problem = path_problem(row["path"], raw)
    if problem is not None and problem.reason == "missing_file" and row["path"] in not_copied:
        seen = not_copied[row["path"]]
        problem = Problem(seen["reason"], f"at ingest: {seen['message']}")
    if problem is None and str(row["sha256"]).strip():
        problem = hash_problem(path, str(row["sha256"]).strip())
    if problem is None and row["modality"] == Modality.IMAGE.value:
        problem = image_problem(path, params.validate)
    if problem is None and row["modality"] == Modality.AUDIO.value:
        problem = audio_problem(path, params.validate)
    if problem is None and row["modality"] == Modality.VIDEO.value:
        from mmretrieval.media.video import video_problem

        problem = video_problem(path, params.validate, params.model.video_frames)
    return problem


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


def hash_problem(path: Path, expected: str) -> Problem | None:
    """The manifest's ``sha256`` for a file: a 64-digit hex SHA-256 that must match the file's bytes."""
    from mmretrieval.core.io import sha256_file

    if not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
        return Problem("sha256_mismatch", f"sha256 {expected[:80]!r} is not a SHA-256 digest (64 hex digits)")
    actual = sha256_file(path)
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
