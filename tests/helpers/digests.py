"""Record the clean media files' sha256 in a clean manifest (``media_sha256``), as ``clean`` records them."""

from __future__ import annotations

from mmretrieval.core.integrity import MEDIA_SHA256, verify_file
from mmretrieval.core.io import read_parquet
from mmretrieval.core.layout import Layout


def record_media_digests(layout: Layout) -> None:
    """Set the clean manifest's ``media_sha256`` column to each clean media file's current sha256 (``""`` for
    text rows)."""
    frame = read_parquet(layout.clean_manifest, "clean manifest")
    frame[MEDIA_SHA256] = [verify_file(layout.clean / m) if modality != "text" else ""
                           for modality, m in zip(frame["modality"], frame["media"], strict=True)]
    frame.to_parquet(layout.clean_manifest, index=False)
