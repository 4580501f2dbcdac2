"""Stage ``clean``: normalise captions, re-encode media, quarantine what cannot be used.

Input: ``data/validated/<dataset>/rows.parquet``. Output ``data/clean/<dataset>/``:
``manifest.parquet`` (clean rows; ``path`` stays the raw relative path, ``media`` names the re-encoded file
relative to this folder), ``quarantine.parquet`` (the original row plus ``reason`` and ``message``),
``duplicates.parquet`` (rows merged into a surviving duplicate: ``merged_into``, reason, distance), ``media/`` and
``report.json``. ``media_sha256`` (clean manifest) is the sha256 of the cleaned file under ``media/``: readers
verify the bytes they read against it.

Each raw file is read once into memory and its sha256 compared with the one ``validate`` recorded (``sha256``):
bytes changed or a file deleted after validation stop the stage with one :class:`DataChangedError` line. Cleaned
media are addressed by content (:class:`CleanedMedia`: the raw file's sha256 + the settings that decide the result):
an entry made for earlier data versions is hard-linked into ``media/`` instead of being re-encoded.

Every input row ends in exactly one of the three tables: input = clean + quarantined + merged.
Exact (sha256) and near-duplicate images (difference hash) collapse into the first of their group, which keeps the
union of their captions; a group that spanned splits (leakage) is reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from mmretrieval.core.cache import ItemCache, fingerprint
from mmretrieval.core.contracts import CleanResult
from mmretrieval.core.digests import FileDigests
from mmretrieval.core.errors import DataChangedError, MediaError, ValidationFailed
from mmretrieval.core.io import atomic_dir, file_digests, read_parquet, write_json
from mmretrieval.core.layout import read_data_version
from mmretrieval.core.params import Params
from mmretrieval.core.progress import progress
from mmretrieval.core.schema import MESSAGE, REASON, Modality, join_captions, row_dicts, split_captions
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.media.audio import clean_audio
from mmretrieval.media.dedup import ImageHash, dhash, find_duplicates
from mmretrieval.media.image import open_item_image, scaled_down
from mmretrieval.media.text import count_fixed_captions, normalize_captions, normalize_metadata, normalize_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# Bump when re-encoding, the difference hash or video probing changes what they make: every cached entry is then
# made anew.
CLEAN_VERSION = 2  # 2: an animation's representative frame, blank pictures refused (issue 25)


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
        with settings.file_digests() as memo:
            cache = CleanedMedia(layout.item_cache, params, memo)
            cache.files[Modality.IMAGE.value].sweep()  # temporary files of killed writers (one folder for all kinds)
            for sidecars in cache.sidecars.values():
                sidecars.open_pack(dataset)
            rows, phashes = _clean_rows(rows, layout.raw, tmp / "media", params, dataset, cache, data_version)
            for sidecars in cache.sidecars.values():  # the entries this version used, for the next run
                sidecars.save_pack()
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
            **cache.counts(),
            **memo.counts(),
            "modalities": {k: int(v) for k, v in clean["modality"].value_counts().items()},
            "splits": {k: int(v) for k, v in clean["split"].value_counts().items()},
            "seconds": round(time.monotonic() - started, 2),
        }
        write_json(tmp / layout.clean_report.name, report)
    log.info("clean %s: %d in = %d clean + %d quarantined %s; media: %d reused, %d computed", dataset,
             report["input"], report["clean"], report["quarantined"], report["reasons"], report["reused"],
             report["computed"])
    return CleanResult(dataset, data_version, report["input"], report["clean"], report["quarantined"],
                       report["merged_duplicates"], report["split_leakage_resolved"], report["reasons"],
                       str(layout.clean_manifest), captions_fixed, report["reused"], report["computed"])


def _clean_rows(rows: pd.DataFrame, raw: Path, media_dir: Path, params: Params, dataset: str,
                cache: CleanedMedia, data_version: str) -> tuple[pd.DataFrame, list[ImageHash | None]]:
    """Clean each row that validation passed: captions normalised (``text``), a media file re-encoded into
    ``media_dir`` or linked from ``cache`` (``media``: its path relative to the clean folder; ``media_sha256``: of
    that file; ``sha256``: of the raw file, as validated; video ``metadata`` completed by probing). A row that
    cannot be used gets its ``reason`` and ``message``. Returns the rows and the image rows' difference hashes
    (None for other rows), by position. Raises :class:`DataChangedError` for a raw file changed since validation."""
    reasons: list[str] = list(rows[REASON])
    messages: list[str] = list(rows[MESSAGE])
    media: list[str] = [""] * len(rows)
    media_sha: list[str] = [""] * len(rows)
    texts: list[str] = list(rows["text"])
    hashes: list[str] = list(rows["sha256"])
    phashes: list[ImageHash | None] = [None] * len(rows)
    limit = params.validate.max_caption_chars
    for i, row in progress(row_dicts(rows), f"clean {dataset}", total=len(rows)):
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
        try:
            entry, made = cache.fetch(row["modality"], hashes[i], src, data_version)
        except MediaError as e:
            reason = getattr(e, "reason", "undecodable")  # BadVideo, BlankImage carry theirs
            reasons[i], messages[i] = reason, f"{row['id']}: {e}"
            continue
        name = media_name(row["id"], made["suffix"])
        try:
            place(entry, media_dir / name)
        except FileNotFoundError:  # the entry was pruned since it was found: made again (a fresh entry, kept)
            cache.reused -= 1  # counted as reused by the fetch above (a fresh entry is never pruned: its grace)
            entry, made = cache.fetch(row["modality"], hashes[i], src, data_version)
            place(entry, media_dir / name)
        phashes[i] = ImageHash(made["dhash"]["bits"], tuple(made["dhash"]["colour"]), made["dhash"]["min_side"],
                               made["dhash"].get("blank", False)) if made.get("dhash") else None
        if made.get("video") is not None:
            rows.at[i, "metadata"] = json.dumps(json.loads(row["metadata"] or "{}") | {"video": made["video"]},
                                                ensure_ascii=False)
        media[i], media_sha[i] = f"media/{name}", made["media_sha256"]
    return rows.assign(text=texts, sha256=hashes, media=media, media_sha256=media_sha,
                       **{REASON: reasons, MESSAGE: messages}), phashes


def read_verified(path: Path, expected: str, data_version: str, limit: int) -> bytes:
    """The bytes of the raw file ``path``, read once, whose sha256 must be ``expected`` (what ``validate`` found):
    the bytes hashed are the bytes cleaned, so a swap between the check and the decoding cannot pass. Raises
    :class:`DataChangedError` (one line: the file, both digests, the data version, what to run) for other bytes
    or a missing file; :class:`ValidationFailed` for rows validated without a digest (an older validate)."""
    if not expected:
        raise ValidationFailed(f"{path}: the validated rows carry no sha256 for it (validated by an older "
                               "mmretrieval): run `mmr validate` again")
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > limit:  # larger than validate passes: hash it before holding it
                found = hashlib.file_digest(f, "sha256").hexdigest()
                if found != expected:
                    raise DataChangedError.of(path, f"sha256 {expected}", f"sha256 {found}", data_version,
                                              "validation")
                f.seek(0)  # the limit changed since validation, not the file: read it (and check it again below)
            data = f.read()
    except FileNotFoundError:
        raise DataChangedError.of(path, f"sha256 {expected}", None, data_version, "validation") from None
    except (IsADirectoryError, PermissionError) as e:
        raise DataChangedError.of(path, f"sha256 {expected}", f"an unreadable path ({e.strerror})", data_version,
                                  "validation") from None
    found = hashlib.sha256(data).hexdigest()
    if found != expected:
        raise DataChangedError.of(path, f"sha256 {expected}", f"sha256 {found}", data_version, "validation")
    return data


class _DHash(BaseModel):
    bits: int
    colour: tuple[float, float, float]
    min_side: int
    blank: bool = False


class _Sidecar(BaseModel):
    """What :class:`CleanedMedia` reads from a sidecar; other fields are ignored."""

    suffix: str
    media_sha256: str
    dhash: _DHash | None = None
    video: dict | None = None


def sidecar_ok(made: dict) -> bool:
    """Whether a sidecar (from its file or a pack) holds what clean reads, with the right types: a damaged one is
    a miss (the entry is made again), never a crash."""
    try:
        _Sidecar.model_validate(made)
    except ValidationError:
        return False
    return True


def unchanged(path: Path, expected: str, data_version: str, memo: FileDigests) -> None:
    """Check that the raw file ``path`` still hashes to ``expected`` (what ``validate`` found) without holding its
    bytes: through ``memo`` (read only when its inode, size or mtime moved). Raises :class:`DataChangedError` like
    :func:`read_verified`."""
    try:
        found = memo.sha256(path)
    except FileNotFoundError:
        raise DataChangedError.of(path, f"sha256 {expected}", None, data_version, "validation") from None
    except (IsADirectoryError, PermissionError) as e:
        raise DataChangedError.of(path, f"sha256 {expected}", f"an unreadable path ({e.strerror})", data_version,
                                  "validation") from None
    if found != expected:
        raise DataChangedError.of(path, f"sha256 {expected}", f"sha256 {found}", data_version, "validation")


def place(entry: Path, target: Path) -> None:
    """Put the cache entry ``entry`` at ``target``: a hard link (no copy, no time), a copy across file systems."""
    try:
        os.link(entry, target)
    except OSError:
        shutil.copyfile(entry, target)


class CleanedMedia:
    """Cleaned media addressed by content: one :class:`~mmretrieval.core.cache.ItemCache` entry (kind
    ``clean-media``) per raw file's sha256 and exactly the settings that decide its cleaning, for each modality:

    - image: ``clean.image_short_side``, ``clean.image_max_side``, ``validate.max_image_pixels``;
    - audio: ``clean.audio_sample_rate``, ``audio_trim_db``, ``audio_target_dbfs``, ``validate.max_audio_seconds``;
    - video: nothing but the code (the file is kept; probing fills its metadata);

    plus :data:`CLEAN_VERSION`. An entry is the cleaned file ``<key>.media`` (read-only: it is hard-linked into
    clean outputs) and a JSON sidecar ``<key>.json`` written after it, the entry's commit mark: ``media_sha256``,
    the file's ``suffix``, an image's difference hash (``dhash``: bits, colour, min_side, blank), a video's ``video``
    facts. An entry whose file is missing or whose bytes differ from ``media_sha256`` is made anew."""

    def __init__(self, root: Path, params: Params, memo: FileDigests | None = None) -> None:
        c, v = params.clean, params.validate
        decides = {
            Modality.IMAGE.value: {"image_short_side": c.image_short_side, "image_max_side": c.image_max_side,
                                   "max_image_pixels": v.max_image_pixels},
            Modality.AUDIO.value: {"audio_sample_rate": c.audio_sample_rate, "audio_trim_db": c.audio_trim_db,
                                   "audio_target_dbfs": c.audio_target_dbfs, "max_audio_seconds": v.max_audio_seconds},
            Modality.VIDEO.value: {},
        }
        self.files = {m: ItemCache(root, "clean-media", fingerprint(m, CLEAN_VERSION, d), ".media")
                      for m, d in decides.items()}
        self.sidecars = {m: ItemCache(root, "clean-media", fingerprint(m, CLEAN_VERSION, d), ".json")
                         for m, d in decides.items()}
        self.params = params
        self.memo = memo if memo is not None else FileDigests(None)
        self.reused = self.computed = 0

    def get(self, modality: str, digest: str) -> tuple[Path, dict] | None:
        """The entry of the raw bytes ``digest``: (cleaned file, sidecar), or None (no sidecar, no file, or a file
        whose bytes are not the ones recorded: checked through the digests memo, read when its identity moved)."""
        key = self.files[modality].key(digest)
        made = self.sidecars[modality].recall(key)  # the dataset's pack, else the sidecar file
        entry = self.files[modality].get(key, touch=False)  # hard-linked into data/clean: the sidecar marks use
        if made is None or entry is None or not sidecar_ok(made):
            return None
        try:
            return (entry, made) if self.memo.sha256(entry) == made.get("media_sha256") else None
        except FileNotFoundError:  # removed by a prune since it was found: a miss
            return None

    def fetch(self, modality: str, digest: str, src: Path, data_version: str) -> tuple[Path, dict]:
        """The entry for the raw file ``src`` whose bytes validation found to hash to ``digest``. Found: ``src`` is
        still checked to be those bytes (:func:`unchanged`, through the memo: no read while its identity holds).
        Missing: made from ``src``'s bytes read once and verified (:func:`read_verified`, :func:`clean_media`), the
        file first, then the sidecar. Raises :class:`MediaError` (not cached) and :class:`DataChangedError`."""
        if digest and (found := self.get(modality, digest)) is not None:  # no digest: read_verified says why
            unchanged(src, digest, data_version, self.memo)
            self.reused += 1
            return found
        data = read_verified(src, digest, data_version, self.params.validate.max_file_bytes)
        key = self.files[modality].key(digest)
        made: dict = {}
        digests: dict[str, str] = {}

        def write(tmp: Path) -> None:
            made.update(clean_media(modality, data, src.name, tmp, self.params))
            tmp.chmod(0o444)
            digests.update(file_digests(tmp))
            made["media_sha256"] = digests["sha256"]

        entry = self.files[modality].put(key, write)
        self.memo.record(entry, digests)  # written and hashed here (renamed, not rewritten): no second read
        self.sidecars[modality].remember(key, made)
        self.computed += 1
        return entry, made

    def counts(self) -> dict[str, int]:
        """``{"reused": n, "computed": m}``: entries linked from the cache / made in this run."""
        return {"reused": self.reused, "computed": self.computed}


def clean_media(modality: str, data: bytes, name: str, dst: Path, params: Params) -> dict:
    """Clean one media file's bytes ``data`` (from a file named ``name``) into ``dst``: images as PNG scaled down to
    at most ``clean.image_short_side`` pixels on the shorter side and ``clean.image_max_side`` on the longer one (an
    animation's representative frame; :func:`~mmretrieval.media.image.scaled_down`); audio mono at one sample rate,
    silence trimmed, loudness normalised, 16-bit WAV; video kept as it is. Decoded from a private copy of the
    verified bytes, named like the raw file (messages name it). Returns the sidecar facts: ``suffix`` of the clean
    file, an image's ``dhash`` (bits, colour, min_side, blank), a video's ``video`` (duration_s, fps, width, height,
    codec, has_audio, rotation, variable_frame_rate). Raises :class:`MediaError` (for video a ``BadVideo``, for a
    blank picture a ``BlankImage``, with its ``reason``)."""
    with tempfile.TemporaryDirectory(prefix="mmr-clean-") as scratch:
        src = Path(scratch) / name
        src.write_bytes(data)
        if modality == Modality.IMAGE.value:
            im = open_item_image(src, params.validate.max_image_pixels)  # a blank picture: BlankImage
            phash = dhash(im)
            im = scaled_down(im, params.clean.image_short_side, params.clean.image_max_side)
            im.save(dst, format="PNG", optimize=False)
            return {"suffix": ".png", "dhash": {"bits": phash.bits, "colour": list(phash.colour),
                                                "min_side": phash.min_side, "blank": phash.blank}}
        if modality == Modality.VIDEO.value:  # the original file is kept; what probing found goes to metadata
            from mmretrieval.media.video import probe

            info = probe(src).as_dict()
            dst.write_bytes(data)
            return {"suffix": Path(name).suffix.lower(), "video": info}
        out = Path(scratch) / "clean.wav"  # the writer takes the format from the name
        clean_audio(src, out, params.clean.audio_sample_rate, params.clean.audio_trim_db,
                    params.clean.audio_target_dbfs, params.validate.max_audio_seconds)
        shutil.copyfile(out, dst)
        return {"suffix": ".wav"}


def _tables(rows: pd.DataFrame, phashes: list[ImageHash | None], max_distance: int
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """The cleaned ``rows`` as (clean, quarantine, duplicates, groups that spanned splits): duplicates merged into
    their group's first row (:func:`_merge_duplicates`), every row in exactly one table."""
    bad = rows[REASON] != ""
    duplicates, leakage = _merge_duplicates(rows, bad, phashes, max_distance)
    merged = rows.index.isin(duplicates["row"]) if len(duplicates) else rows.index.isin([])
    clean = rows.loc[~bad & ~merged].drop(columns=[REASON, MESSAGE]).reset_index(drop=True)
    quarantine = rows.loc[bad].drop(columns=["media", "media_sha256"]).reset_index(drop=True)
    if len(clean) + len(quarantine) + len(duplicates) != len(rows):  # the accounting promise
        raise AssertionError(f"lost rows: {len(rows)} in, {len(clean)} clean + {len(quarantine)} quarantined "
                             f"+ {len(duplicates)} merged")
    return clean, quarantine, duplicates, leakage


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


