"""Stage ``clean``: normalise captions, re-encode media, quarantine what cannot be used.

Input: ``data/validated/<dataset>/rows.parquet``. Output ``data/clean/<dataset>/``:
``manifest.parquet`` (clean rows; ``path`` stays the raw relative path, ``media`` names the re-encoded file
relative to this folder), ``quarantine.parquet`` (the original row plus
``reason`` and ``message``), ``media/`` and ``report.json``. Every input row ends in exactly one of the two tables.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mmretrieval.config import Settings, get_settings
from mmretrieval.errors import MediaError, ValidationFailed
from mmretrieval.io import atomic_dir, read_parquet, write_json
from mmretrieval.media import open_image
from mmretrieval.prep.text import normalize_captions
from mmretrieval.schema import MESSAGE, REASON, Modality, join_captions, split_captions

log = logging.getLogger(__name__)


def media_name(item_id: str, suffix: str) -> str:
    """A file-system-safe, collision-free file name for an item id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:80]
    return f"{safe}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}{suffix}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    started = time.monotonic()
    validated = settings.stage_dir("validated", dataset)
    rows = read_parquet(validated / "rows.parquet", f"validated rows of {dataset!r}")
    raw = settings.raw_dir(dataset)
    data_version = read_data_version(validated)

    out = settings.stage_dir("clean", dataset)
    with atomic_dir(out) as tmp:
        (tmp / "media").mkdir()
        reasons: list[str] = list(rows[REASON])
        messages: list[str] = list(rows[MESSAGE])
        media: list[str] = [""] * len(rows)
        texts: list[str] = list(rows["text"])
        hashes: list[str] = list(rows["sha256"])
        for i, row in tqdm(list(rows.iterrows()), desc=f"clean {dataset}", unit="item", leave=False, disable=None):
            if reasons[i]:
                continue
            captions = normalize_captions(split_captions(row["text"]), params.clean.lowercase)
            texts[i] = join_captions(captions)
            modality = row["modality"]
            if modality == Modality.TEXT.value:
                if not captions:
                    reasons[i], messages[i] = "empty_text", f"{row['id']}: text is empty after normalisation"
                continue
            src = raw / row["path"]
            hashes[i] = _sha256(src)
            if modality == Modality.IMAGE.value:
                try:
                    im = open_image(src, params.validate.max_image_pixels)
                except MediaError as e:
                    reasons[i], messages[i] = "undecodable", f"{row['id']}: {e}"
                    continue
                im.thumbnail((params.clean.image_max_side, params.clean.image_max_side))
                name = media_name(row["id"], ".png")
                im.save(tmp / "media" / name, format="PNG", optimize=False)
            else:  # audio: copied as is until the audio cleaning stage exists
                name = media_name(row["id"], src.suffix.lower())
                shutil.copyfile(src, tmp / "media" / name)
            media[i] = f"media/{name}"

        rows = rows.assign(text=texts, sha256=hashes, **{REASON: reasons, MESSAGE: messages})
        bad = rows[REASON] != ""
        clean = rows.assign(media=media).loc[~bad].drop(columns=[REASON, MESSAGE]).reset_index(drop=True)
        quarantine = rows.loc[bad].reset_index(drop=True)
        if len(clean) + len(quarantine) != len(rows):  # the accounting promise; cannot fail unless code is wrong
            raise AssertionError(f"lost rows: {len(rows)} in, {len(clean)} clean + {len(quarantine)} quarantined")
        if clean.empty:
            raise ValidationFailed(f"dataset {dataset!r}: no row survived cleaning; see {out / 'quarantine.parquet'}")
        clean.to_parquet(tmp / "manifest.parquet", index=False)
        quarantine.to_parquet(tmp / "quarantine.parquet", index=False)
        report = {
            "dataset": dataset,
            "data_version": data_version,
            "input": len(rows),
            "clean": len(clean),
            "quarantined": len(quarantine),
            "reasons": dict(Counter(quarantine[REASON])),
            "modalities": {k: int(v) for k, v in clean["modality"].value_counts().items()},
            "splits": {k: int(v) for k, v in clean["split"].value_counts().items()},
            "seconds": round(time.monotonic() - started, 2),
        }
        write_json(tmp / "report.json", report)
    log.info("clean %s: %d in = %d clean + %d quarantined %s", dataset, report["input"], report["clean"],
             report["quarantined"], report["reasons"])
    return {k: report[k] for k in ("dataset", "data_version", "input", "clean", "quarantined", "reasons")} | {
        "manifest": str(out / "manifest.parquet")}


def read_data_version(stage_dir: Path) -> str:
    from mmretrieval.io import read_json

    return str(read_json(stage_dir / "report.json", f"report of {stage_dir}")["data_version"])
