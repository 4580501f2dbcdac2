"""The data contract: the one place that knows the manifest's column names.

A manifest is a CSV (UTF-8, an optional BOM is accepted) with one row per item:

==========  ========  ==================================================================================
column      required  meaning
==========  ========  ==================================================================================
id          yes       unique, non-empty item id
modality    yes       ``image``, ``audio``, ``video`` or ``text``
path        yes*      media file relative to the manifest's folder (*empty for ``text`` items)
text        no        caption(s); several are joined with `` ||| ``
label       no        class label; items with the same label are relevant to each other in evaluation
split       no        ``train``, ``val``, ``test`` or empty (empty: assigned from a hash, see :func:`assign_split`)
group       no        items with the same group always land in the same split (default: the id)
sha256      no        expected file hash; ``validate`` records the file's actual one
source      no        where the item came from (free text)
==========  ========  ==================================================================================

Extra columns are kept in ``metadata`` (a JSON object). Column order does not matter.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mmretrieval.core.errors import ConfigError, ManifestError

if TYPE_CHECKING:
    import pandas as pd

CAPTION_SEPARATOR = " ||| "
REQUIRED_COLUMNS = ("id", "modality", "path")
OPTIONAL_COLUMNS = ("text", "label", "split", "group", "sha256", "source")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
# columns that stages add; a clean manifest has COLUMNS + these
METADATA = "metadata"
REASON = "reason"  # machine-readable reason code of a quarantined row
MESSAGE = "message"  # human-readable reason

# The index collection's field limits, in UTF-8 bytes: the one place that defines them. The index creates every
# collection with them (mmretrieval.backends.index) and validation refuses rows that would not fit, before training.
MAX_VARCHAR = 65_535  # Milvus' longest VARCHAR field
VARCHAR_LIMITS = {"id": 512, "modality": 16, "text": MAX_VARCHAR, "path": 4096, "label": 512,
                  "model_version": 64, "data_version": 64}
JSON_MAX_BYTES = 65_536  # a server refuses a JSON field above this ("json field exceeds max length"); Lite does not
METADATA_RESERVE = 1_024  # of JSON_MAX_BYTES, kept for what publish adds to an item's metadata (clean_media)


class Modality(enum.StrEnum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"  # MP4, MKV, WebM, MOV, AVI (PyAV): K frames through the image tower (mmretrieval.media.video)


class Split(enum.StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


MODALITIES = tuple(m.value for m in Modality)
SPLITS = tuple(s.value for s in Split)


def split_captions(text: str) -> list[str]:
    """``"a ||| b"`` -> ``["a", "b"]`` (empty parts dropped)."""
    return [part.strip() for part in str(text or "").split(CAPTION_SEPARATOR.strip()) if part.strip()]


def join_captions(captions: list[str]) -> str:
    return CAPTION_SEPARATOR.join(captions)


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest CSV into a frame with exactly :data:`COLUMNS` + ``metadata``, all strings.

    Raises :class:`ManifestError` for an unreadable file, a non-UTF-8 file, missing required columns or no rows.
    """
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"manifest {path} is a folder; give the manifest CSV file inside it")
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"manifest {path} is not UTF-8 (byte {e.start}: {raw_byte(path, e.start)}); re-save it as UTF-8"
        ) from e
    import io

    if "\r" in raw and "\n" not in raw:  # classic Mac OS line endings (CR only)
        raw = raw.replace("\r", "\n")
    header = _header(raw, path)
    try:
        df = pd.read_csv(io.StringIO(raw), dtype=str, keep_default_na=False, na_filter=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ManifestError(f"manifest {path} is not a readable CSV: {e}") from e
    if len(header) == len(df.columns):  # pandas renamed repeats (text.1); the header as written is what counts
        df.columns = [column_key(c) if column_key(c) in COLUMNS else c.strip() for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks required column(s) {missing}; it has {list(df.columns)}"
        )
    if df.empty:
        raise ManifestError(f"manifest {path} has a header but no rows")
    extra = [c for c in df.columns if c not in COLUMNS]
    for c in OPTIONAL_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    df[METADATA] = (
        df[extra].apply(lambda r: json.dumps(dict(r), ensure_ascii=False), axis=1) if extra else "{}"
    )
    out = df[list(COLUMNS) + [METADATA]].copy()
    for c in ("id", "modality", "split"):
        out[c] = out[c].str.strip()
    out["path"] = out["path"].str.replace("\\", "/")  # a Windows separator: ingest, validate and clean agree
    out["modality"] = out["modality"].str.lower()
    out["split"] = out["split"].str.lower()
    return out.reset_index(drop=True)


def row_dicts(frame: pd.DataFrame) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(index label, {column: value}) per row of ``frame``, one at a time: what ``iterrows`` gives without building
    a pandas Series per row (~0.3 ms each, half a minute over 100k rows) and without holding every row's dict."""
    columns = list(frame.columns)
    for label, *values in frame.itertuples(index=True, name=None):
        yield label, dict(zip(columns, values, strict=True))


def column_key(name: str) -> str:
    """What a header name means: Unicode-normalised (NFKC), invisible format characters (zero-width space, BOM)
    removed, whitespace stripped, case-folded. ``" Text\u200b"`` -> ``"text"``."""
    import unicodedata

    name = unicodedata.normalize("NFKC", str(name))
    return "".join(ch for ch in name if unicodedata.category(ch) != "Cf").strip().casefold()


def _header(raw: str, path: Path) -> list[str]:
    """The header row as written, checked with the rows in one pass of the CSV reader. Raises
    :class:`ManifestError` when two names mean the same column (:func:`column_key`), e.g. ``text`` and ``text ``
    or ``id`` twice, naming them and their positions; when several names are blank; and when rows have more fields
    than the header (pandas would shift every column of such a file by one, or drop the extra field)."""
    import csv
    import io

    header: list[str] = []
    wide: list[tuple[int, int]] = []
    try:
        for number, row in enumerate(csv.reader(io.StringIO(raw)), start=1):
            if number == 1:
                header = row
            elif len(row) > len(header):
                wide.append((number, len(row)))
    except csv.Error as e:
        raise ManifestError(f"manifest {path} is not a readable CSV: {e}") from e
    blank = [p for p, name in enumerate(header, start=1) if not column_key(name)]
    if len(blank) > 1:
        raise ManifestError(f"manifest {path} has {len(blank)} header names that are blank (columns "
                            f"{', '.join(map(str, blank))}); name or remove those columns")
    seen: dict[str, list[int]] = {}
    for position, name in enumerate(header, start=1):
        if column_key(name):
            seen.setdefault(column_key(name), []).append(position)
    clashes = {key: spots for key, spots in seen.items() if len(spots) > 1}
    if clashes:
        shown = "; ".join(" and ".join(f"{header[p - 1]!r} (column {p})" for p in spots) for spots in clashes.values())
        raise ManifestError(f"manifest {path} has header names that mean the same column once whitespace and case "
                            f"are ignored: {shown}; rename or remove the repeats")
    if wide:
        shown = ", ".join(f"row {n} has {k}" for n, k in wide[:3])
        raise ManifestError(f"manifest {path}: {len(wide)} row(s) have more fields than the header's {len(header)} "
                            f"({shown}); a caption with a comma needs quotes")
    return header


def raw_byte(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return repr(f.read(1))


class SplitRatios(Protocol):
    """The shares of hash-assigned splits (``params.yaml`` ``split``: :class:`mmretrieval.core.params.SplitParams`)."""

    train: float  # share of train, 0..1
    val: float
    salt: str  # changing it reshuffles every unassigned row


def assign_split(key: str, ratios: SplitRatios) -> str:
    """Deterministic split for an item whose split is empty: a hash of its group (or id) and the salt."""
    digest = hashlib.sha256(f"{ratios.salt}:{key}".encode()).hexdigest()
    u = int(digest[:12], 16) / float(16**12)
    if u < ratios.train:
        return Split.TRAIN.value
    if u < ratios.train + ratios.val:
        return Split.VAL.value
    return Split.TEST.value


def fill_splits(df: pd.DataFrame, ratios: SplitRatios) -> pd.DataFrame:
    """Assign a split to rows whose split is empty (other values are left for validation to judge)."""
    out = df.copy()
    empty = out["split"] == ""
    keys = out["group"].where(out["group"] != "", out["id"])
    out.loc[empty, "split"] = [assign_split(k, ratios) for k in keys[empty]]
    return out


DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def check_dataset_name(name: str) -> str:
    if not DATASET_NAME.match(name):
        raise ConfigError(
            f"dataset name {name!r} is not allowed: use 1-48 lowercase letters, digits and '_', starting with a letter"
        )
    return name


def captions_of(row: Any) -> list[str]:
    """A row's captions; a labelled row without text uses its label as its caption."""
    caps = split_captions(row["text"])
    return caps or ([str(row["label"])] if row["label"] else [])
