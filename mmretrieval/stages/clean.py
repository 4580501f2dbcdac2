"""Stage ``clean``: normalise captions, re-encode media, quarantine what cannot be used.

Input: ``data/validated/<dataset>/rows.parquet``. Output ``data/clean/<dataset>/``:
``manifest.parquet`` (clean rows; ``path`` stays the raw relative path, ``media`` names the re-encoded file
relative to this folder), ``quarantine.parquet`` (the original row plus ``reason`` and ``message``),
``duplicates.parquet`` (rows merged into a surviving duplicate: ``merged_into``, reason, distance), ``media/`` and
``report.json``. Every input row ends in exactly one of the three tables: input = clean + quarantined + merged.
Exact (sha256) and near-duplicate images (difference hash) collapse into the first of their group, which keeps the
union of their captions; a group that spanned splits (leakage) is reported.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from mmretrieval.core.contracts import CleanResult
from mmretrieval.core.errors import MediaError, ValidationFailed
from mmretrieval.core.io import atomic_dir, read_parquet, sha256_file, write_json
from mmretrieval.core.layout import read_data_version
from mmretrieval.core.params import Params
from mmretrieval.core.schema import MESSAGE, REASON, Modality, join_captions, split_captions
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.media.audio import clean_audio
from mmretrieval.media.dedup import ImageHash, dhash, find_duplicates
from mmretrieval.media.image import open_item_image
from mmretrieval.media.text import count_fixed_captions, normalize_captions, normalize_metadata, normalize_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def media_name(item_id: str, suffix: str) -> str:
    """A file-system-safe, collision-free file name for an item id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:80]
    return f"{safe}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}{suffix}"


def run(dataset: str, settings: Settings | None = None) -> CleanResult:
    """Clean the validated rows of ``dataset`` into ``data/clean/<dataset>/`` (replaced whole, atomically). Raises
    :class:`ValidationFailed` when no row survives."""
    settings = settings or get_settings()
    params = settings.params_for(dataset)
    started = time.monotonic()
    layout = settings.layout(dataset)
    rows = read_parquet(layout.validated_rows, f"validated rows of {dataset!r}")
    data_version = read_data_version(layout.validation_report)
    usable = rows[REASON] == ""  # labels and metadata values normalised like captions, queries and filter values
    captions_fixed = count_fixed_captions(list(rows.loc[usable, "text"]))
    rows["label"] = [normalize_text(v) if ok else v for v, ok in zip(rows["label"], usable, strict=True)]
    rows["metadata"] = [normalize_metadata(v) if ok else v for v, ok in zip(rows["metadata"], usable, strict=True)]

    with atomic_dir(layout.clean) as tmp:  # files named as in the layout, the folder renamed into place
        (tmp / "media").mkdir()
        rows, phashes = _clean_rows(rows, layout.raw, tmp / "media", params, dataset)
        clean, quarantine, duplicates, leakage = _tables(rows, phashes, params.clean.near_duplicate_distance)
        if clean.empty:
            raise ValidationFailed(f"dataset {dataset!r}: no row survived cleaning; see {layout.quarantine}")
        clean.to_parquet(tmp / layout.clean_manifest.name, index=False)
        quarantine.to_parquet(tmp / layout.quarantine.name, index=False)
        duplicates.drop(columns=["row"]).to_parquet(tmp / layout.duplicates.name, index=False)
        report = {
            "dataset": dataset,
            "data_version": data_version,
            "input": len(rows),
            "clean": len(clean),
            "quarantined": len(quarantine),
            "merged_duplicates": len(duplicates),
            "captions_fixed": captions_fixed,
            "duplicates": dict(Counter(duplicates["reason"])),
            "split_leakage_resolved": leakage,
            "reasons": dict(Counter(quarantine[REASON])),
            "modalities": {k: int(v) for k, v in clean["modality"].value_counts().items()},
            "splits": {k: int(v) for k, v in clean["split"].value_counts().items()},
            "seconds": round(time.monotonic() - started, 2),
        }
        write_json(tmp / layout.clean_report.name, report)
    log.info("clean %s: %d in = %d clean + %d quarantined %s", dataset, report["input"], report["clean"],
             report["quarantined"], report["reasons"])
    return CleanResult(dataset, data_version, report["input"], report["clean"], report["quarantined"],
                       report["merged_duplicates"], report["split_leakage_resolved"], report["reasons"],
                       str(layout.clean_manifest), captions_fixed)


def _clean_rows(rows: pd.DataFrame, raw: Path, media_dir: Path, params: Params, dataset: str
                ) -> tuple[pd.DataFrame, list[ImageHash | None]]:
    """Clean each row that validation passed: captions normalised (``text``), a media file re-encoded into
    ``media_dir`` (``media``: its path relative to the clean folder; ``sha256``: of the raw file; video ``metadata``
    completed by probing). A row that cannot be used gets its ``reason`` and ``message``. Returns the rows and the
    image rows' difference hashes (None for other rows), by position."""
    from tqdm import tqdm

    reasons: list[str] = list(rows[REASON])
    messages: list[str] = list(rows[MESSAGE])
    media: list[str] = [""] * len(rows)
    texts: list[str] = list(rows["text"])
    hashes: list[str] = list(rows["sha256"])
    phashes: list[ImageHash | None] = [None] * len(rows)
    limit = params.validate.max_caption_chars
    for i, row in tqdm(list(rows.iterrows()), desc=f"clean {dataset}", unit="item", leave=False, disable=None):
        if reasons[i]:
            continue
        captions = normalize_captions(split_captions(row["text"]), params.clean.lowercase)
        longest = max((len(c) for c in captions), default=0)
        if longest > limit:
            reasons[i], messages[i] = "caption_too_long", (
                f"{row['id']}: a caption has {longest} characters, above validate.max_caption_chars {limit}")
            continue
        texts[i] = join_captions(captions)
        if row["modality"] == Modality.TEXT.value:
            if not captions:
                reasons[i], messages[i] = "empty_text", f"{row['id']}: text is empty after normalisation"
            continue
        src = raw / row["path"]
        hashes[i] = sha256_file(src)
        try:
            name, phashes[i], metadata = _clean_media(row, src, media_dir, params)
        except MediaError as e:
            reason = getattr(e, "reason", "undecodable")  # BadVideo, BlankImage carry theirs
            reasons[i], messages[i] = reason, f"{row['id']}: {e}"
            continue
        if metadata is not None:
            rows.at[i, "metadata"] = metadata
        media[i] = f"media/{name}"
    return rows.assign(text=texts, sha256=hashes, media=media, **{REASON: reasons, MESSAGE: messages}), phashes


def _clean_media(row: pd.Series, src: Path, media_dir: Path, params: Params
                 ) -> tuple[str, ImageHash | None, str | None]:
    """Re-encode one media row's file ``src`` into ``media_dir``: images as PNG at most ``clean.image_max_side``
    pixels a side; audio mono at one sample rate, silence trimmed, loudness normalised, 16-bit WAV; video kept as it
    is. Returns (file name, the image's difference hash or None, the video row's new metadata JSON or None). Raises
    :class:`MediaError` (for video a ``BadVideo``, for a blank picture a ``BlankImage``, with its ``reason``)."""
    modality = row["modality"]
    if modality == Modality.IMAGE.value:
        im = open_item_image(src, params.validate.max_image_pixels)  # a blank picture: BlankImage
        phash = dhash(im)
        im.thumbnail((params.clean.image_max_side, params.clean.image_max_side))
        name = media_name(row["id"], ".png")
        im.save(media_dir / name, format="PNG", optimize=False)
        return name, phash, None
    if modality == Modality.VIDEO.value:  # the original file is kept; what probing found goes to metadata
        name = media_name(row["id"], src.suffix.lower())
        return name, None, keep_video(src, media_dir / name, row["metadata"])
    name = media_name(row["id"], ".wav")
    clean_audio(src, media_dir / name, params.clean.audio_sample_rate, params.clean.audio_trim_db,
                params.clean.audio_target_dbfs, params.validate.max_audio_seconds)
    return name, None, None


def _tables(rows: pd.DataFrame, phashes: list[ImageHash | None], max_distance: int
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """The cleaned ``rows`` as (clean, quarantine, duplicates, groups that spanned splits): duplicates merged into
    their group's first row (:func:`_merge_duplicates`), every row in exactly one table."""
    bad = rows[REASON] != ""
    duplicates, leakage = _merge_duplicates(rows, bad, phashes, max_distance)
    merged = rows.index.isin(duplicates["row"]) if len(duplicates) else rows.index.isin([])
    clean = rows.loc[~bad & ~merged].drop(columns=[REASON, MESSAGE]).reset_index(drop=True)
    quarantine = rows.loc[bad].drop(columns=["media"]).reset_index(drop=True)
    if len(clean) + len(quarantine) + len(duplicates) != len(rows):  # the accounting promise
        raise AssertionError(f"lost rows: {len(rows)} in, {len(clean)} clean + {len(quarantine)} quarantined "
                             f"+ {len(duplicates)} merged")
    return clean, quarantine, duplicates, leakage


def keep_video(src: Path, dst: Path, metadata: str) -> str:
    """Copy the original video to ``dst``; returns ``metadata`` (JSON) with ``video``: duration_s, fps, width,
    height, codec, has_audio, rotation, variable_frame_rate. Raises :class:`MediaError` (a ``BadVideo``)."""
    import json
    import shutil

    from mmretrieval.media.video import probe

    info = probe(src)
    shutil.copyfile(src, dst)
    return json.dumps(json.loads(metadata or "{}") | {"video": info.as_dict()}, ensure_ascii=False)


def _merge_duplicates(rows: pd.DataFrame, bad: pd.Series, phashes: list[ImageHash | None],
                      max_distance: int) -> tuple[pd.DataFrame, int]:
    """Collapse duplicate good rows into their group's first row (in place: captions united, split kept).

    Returns the merged rows (``row``, ``id``, ``merged_into``, ``reason``, ``distance``, ``split``) and the number of
    groups that spanned more than one split.
    """
    import pandas as pd

    good = [i for i in range(len(rows)) if not bad.iat[i]]
    hashes = [rows.at[i, "sha256"] for i in good]
    merges = find_duplicates(hashes, [phashes[i] for i in good], max_distance, [str(rows.at[i, "label"]) for i in good])
    records, groups = [], {}
    for m in merges:
        row, into = good[m.index], good[m.into]
        groups.setdefault(into, set()).add(rows.at[row, "split"])
        captions = split_captions(rows.at[into, "text"]) + split_captions(rows.at[row, "text"])
        rows.at[into, "text"] = join_captions(normalize_captions(captions))
        records.append({"row": row, "id": rows.at[row, "id"], "merged_into": rows.at[into, "id"], "reason": m.reason,
                        "distance": m.distance, "split": rows.at[row, "split"]})
    leakage = sum(1 for into, splits in groups.items() if splits - {rows.at[into, "split"]})
    columns = ["row", "id", "merged_into", "reason", "distance", "split"]
    return pd.DataFrame(records, columns=columns), leakage


