"""Stage ``validate``: the GX suite on the manifest plus media checks, one verdict per row.

Output ``data/validated/<dataset>/``: ``rows.parquet`` (every input row, splits assigned, ``reason``/``message``
empty for good rows), ``report.json`` and ``data_docs.html`` (Great Expectations' rendering of the suite's result).
Hard failures raise :class:`ValidationFailed` and write nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

from mmretrieval import versioning
from mmretrieval.config import Settings, get_settings
from mmretrieval.datasets import NOT_COPIED
from mmretrieval.errors import ValidationFailed
from mmretrieval.io import atomic_dir, write_json
from mmretrieval.media import Problem, audio_problem, image_problem, path_problem
from mmretrieval.schema import MESSAGE, REASON, Modality, fill_splits, read_manifest, split_captions

log = logging.getLogger(__name__)


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    params = settings.params_for(dataset)
    started = time.monotonic()
    raw = settings.raw_dir(dataset)
    data_version = versioning.read_version(raw)
    if versioning.is_modified(settings.home, raw):
        raise ValidationFailed(
            f"{raw} changed since it was tracked (data version {data_version[:12]}): "
            f"run `mmr ingest` again (or `dvc add {raw.relative_to(settings.home)}`) so the change gets a version"
        )
    df = read_manifest(raw / "manifest.csv")

    from mmretrieval.prep.expectations import run_suite

    suite = run_suite(df, dataset, params.validate.labels)
    if suite.hard:
        raise ValidationFailed(f"dataset {dataset!r}: " + "; ".join(suite.hard))

    reasons = dict(suite.row_reasons)
    not_copied_file = raw / NOT_COPIED
    not_copied = json.loads(not_copied_file.read_text(encoding="utf-8")) if not_copied_file.is_file() else {}
    for i, row in df.iterrows():
        if i in reasons:
            continue
        if row["modality"] == Modality.TEXT.value:
            if not split_captions(row["text"]):
                reasons[int(i)] = ("empty_text", "a text item needs non-empty text")
            continue
        problem = path_problem(row["path"], raw)
        if problem is not None and problem.reason == "missing_file" and row["path"] in not_copied:
            seen = not_copied[row["path"]]
            problem = Problem(seen["reason"], f"at ingest: {seen['message']}")
        if problem is None and row["modality"] == Modality.IMAGE.value:
            problem = image_problem(raw / row["path"], params.validate)
        if problem is None and row["modality"] == Modality.AUDIO.value:
            problem = audio_problem(raw / row["path"], params.validate)
        if problem is None and row["modality"] == Modality.VIDEO.value:
            from mmretrieval.video import video_problem

            problem = video_problem(raw / row["path"], params.validate, params.model.video_frames)
        if problem is not None:
            reasons[int(i)] = (problem.reason, f"row {int(i) + 2} ({row['id']}): {problem.message}")

    reassigned = bool(params.split.reassign_without_train and not (df["split"] == "train").any())
    if reassigned:
        log.warning("validate %s: the manifest has no train rows (splits %s); assigning splits from the ratios in "
                    "params.yaml instead (split.reassign_without_train)", dataset, sorted(set(df["split"])))
    rows = fill_splits(df.assign(split="") if reassigned else df, params.split)
    if reassigned:  # keep the verdict on invalid split values
        rows.loc[~df["split"].isin(["train", "val", "test", ""]), "split"] = df["split"]
    rows[REASON] = [reasons.get(i, ("", ""))[0] for i in range(len(rows))]
    rows[MESSAGE] = [reasons.get(i, ("", ""))[1] for i in range(len(rows))]
    bad = rows[REASON] != ""
    if bad.all():
        first = rows.loc[bad, MESSAGE].head(3).tolist()
        raise ValidationFailed(f"dataset {dataset!r}: none of its {len(rows)} rows is usable, e.g. {first}")
    counts = dict(Counter(rows.loc[bad, REASON]))
    report = {
        "dataset": dataset,
        "data_version": data_version,
        "rows": len(rows),
        "valid": int((~bad).sum()),
        "quarantine": int(bad.sum()),
        "reasons": counts,
        "splits": {k: int(v) for k, v in rows.loc[~bad, "split"].value_counts().items()},
        "splits_reassigned": reassigned,
        "expectations": suite.summary,
        "first_problems": rows.loc[bad, ["id", REASON, MESSAGE]].head(20).to_dict("records"),
        "seconds": round(time.monotonic() - started, 2),
    }
    out = settings.stage_dir("validated", dataset)
    with atomic_dir(out) as tmp:
        rows.to_parquet(tmp / "rows.parquet", index=False)
        write_json(tmp / "report.json", report)
        (tmp / "data_docs.html").write_text(suite.html, encoding="utf-8")
    log.info("validate %s: %d rows, %d valid, %d to quarantine %s", dataset, len(rows), report["valid"],
             report["quarantine"], counts)
    return {k: report[k] for k in ("dataset", "data_version", "rows", "valid", "quarantine", "reasons")} | {
        "report": str(out / "report.json")}
