"""Cleaned media addressed by content (stages/clean.CleanedMedia, issue 24): reuse, invalidation, killed writers,
and clean's read of exactly the validated bytes (issue 25)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from mmretrieval.core.errors import DataChangedError
from mmretrieval.core.params import Params
from mmretrieval.stages.clean import CleanedMedia, read_verified


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (300, 200)) -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, color)
    ImageDraw.Draw(im).rectangle((20, 20, 120, 90), fill=(10, 200, 90))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def params(**clean: object) -> Params:
    return Params.model_validate({"clean": clean} if clean else {})


def fetch(cache: CleanedMedia, data: bytes) -> tuple[Path, dict]:
    """The entry of ``data`` as the raw file x.png (in a folder of its own beside the cache's: pytest's own)."""
    src = Path(tempfile.mkdtemp(prefix="raw-", dir=cache.files["image"].root.parent)) / "x.png"
    src.write_bytes(data)
    return cache.fetch("image", hashlib.sha256(data).hexdigest(), src, "0" * 32)


def test_a_reused_entry_is_not_made_again_and_gives_the_same_bytes(tmp_path: Path) -> None:
    data = png_bytes()
    first = CleanedMedia(tmp_path, params())
    entry, made = fetch(first, data)
    assert first.counts() == {"reused": 0, "computed": 1}
    again = CleanedMedia(tmp_path, params())  # a later run (a new data version) with the same bytes
    entry2, made2 = fetch(again, data)
    assert again.counts() == {"reused": 1, "computed": 0}
    assert entry2 == entry and made2 == made and entry.read_bytes() == entry2.read_bytes()
    assert made["media_sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest()
    assert made["dhash"]["min_side"] == 200 and made["suffix"] == ".png"
    gone = CleanedMedia(tmp_path / "elsewhere", params())  # a deleted cache only costs time
    entry3, made3 = fetch(gone, data)
    assert gone.counts()["computed"] == 1 and entry3.read_bytes() == entry.read_bytes() and made3 == made


def test_a_hit_marks_use_on_the_sidecar_and_leaves_the_linked_media_file_alone(tmp_path: Path) -> None:
    """The cleaned file is hard-linked into data/clean (a DVC output): a changed mtime there makes DVC hash it
    again on every run, so a hit marks the entry's use on its sidecar only (pruning reads the newer of the two)."""
    import os

    data = png_bytes()
    entry, _ = fetch(CleanedMedia(tmp_path, params()), data)
    sidecar = entry.with_suffix(".json")
    os.utime(entry, (1_000_000, 1_000_000))
    os.utime(sidecar, (1_000_000, 1_000_000))
    fetch(CleanedMedia(tmp_path, params()), data)
    assert entry.stat().st_mtime == 1_000_000
    assert sidecar.stat().st_mtime > 1_000_000


def test_changed_bytes_or_a_changed_setting_get_a_new_key(tmp_path: Path) -> None:
    cache = CleanedMedia(tmp_path, params(image_max_side=64))
    small, _ = fetch(cache, png_bytes())
    other, _ = fetch(cache, png_bytes(color=(0, 0, 250)))
    assert cache.counts() == {"reused": 0, "computed": 2} and other != small
    bigger = CleanedMedia(tmp_path, params(image_max_side=128))
    big, _ = fetch(bigger, png_bytes())
    assert bigger.counts()["computed"] == 1 and big != small
    from PIL import Image

    assert max(Image.open(small).size) == 64 and max(Image.open(big).size) == 128
    short = CleanedMedia(tmp_path, params(image_short_side=32))  # the shorter side's bound is in the key too
    narrow, _ = fetch(short, png_bytes())
    assert short.counts()["computed"] == 1 and min(Image.open(narrow).size) == 32
    lowercase = CleanedMedia(tmp_path, params(image_max_side=64, lowercase=True))  # captions only: same entries
    fetch(lowercase, png_bytes())
    assert lowercase.counts() == {"reused": 1, "computed": 0}


def test_an_entry_whose_file_was_altered_is_made_anew_not_served(tmp_path: Path) -> None:
    data = png_bytes()
    entry, made = fetch(CleanedMedia(tmp_path, params()), data)
    entry.chmod(0o644)
    entry.write_bytes(b"not the cleaned picture")  # e.g. written through a hard link in a clean output
    cache = CleanedMedia(tmp_path, params())
    entry2, made2 = fetch(cache, data)
    assert cache.counts()["computed"] == 1 and hashlib.sha256(entry2.read_bytes()).hexdigest() == made["media_sha256"]


def test_a_failed_writer_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmretrieval.stages.clean as clean

    def half_then_fail(modality: str, data: bytes, name: str, dst: Path, p: Params) -> dict:
        dst.write_bytes(b"half a png")
        raise RuntimeError("disk full")

    monkeypatch.setattr(clean, "clean_media", half_then_fail)
    cache = CleanedMedia(tmp_path, params())
    data = png_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        fetch(cache, data)
    assert cache.get("image", hashlib.sha256(data).hexdigest()) is None
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


KILLED = """
import hashlib, os, signal, sys
from pathlib import Path
import mmretrieval.stages.clean as clean
from mmretrieval.core.params import Params

root, where, data = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_bytes()
cache = clean.CleanedMedia(root, Params())
if where == "file":  # mid-write of the cleaned file
    real = clean.clean_media
    def killed(modality, data, name, dst, p):
        real(modality, data, name, dst, p)
        os.kill(os.getpid(), signal.SIGKILL)
    clean.clean_media = killed
else:  # the cleaned file in place, killed before its sidecar (the entry's commit mark) is written
    sidecars = cache.sidecars["image"]
    sidecars.put = lambda key, write: os.kill(os.getpid(), signal.SIGKILL)
cache.fetch("image", hashlib.sha256(data).hexdigest(), Path(sys.argv[3]), "0" * 32)
"""


@pytest.mark.parametrize("where", ["file", "sidecar"])
def test_a_writer_killed_mid_entry_leaves_nothing_get_returns(tmp_path: Path, where: str) -> None:
    data = png_bytes()
    (tmp_path / "in.png").write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), str(tmp_path / "cache"), where,
                           str(tmp_path / "in.png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    digest = hashlib.sha256(data).hexdigest()
    assert list((tmp_path / "cache").rglob("*.media" if where == "sidecar" else "*.tmp*"))  # it died mid-entry
    cache = CleanedMedia(tmp_path / "cache", params())
    assert cache.get("image", digest) is None
    entry, made = fetch(cache, data)  # the next run makes it whole
    assert cache.counts()["computed"] == 1 and cache.get("image", digest) == (entry, made)


def test_clean_reads_exactly_the_validated_bytes_or_stops_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"validated bytes")
    digest = hashlib.sha256(b"validated bytes").hexdigest()
    assert read_verified(path, digest, "0123456789abcdef", 1000) == b"validated bytes"
    path.write_bytes(b"validated byteZ")  # same size
    with pytest.raises(DataChangedError) as changed:
        read_verified(path, digest, "0123456789abcdef", 1000)
    text = str(changed.value)
    assert "\n" not in text and str(path) in text and digest in text and "0123456789ab" in text
    assert hashlib.sha256(b"validated byteZ").hexdigest() in text and "mmr ingest" in text
    path.unlink()
    with pytest.raises(DataChangedError, match="the file is gone"):
        read_verified(path, digest, "0123456789abcdef", 1000)
    path.write_bytes(b"x" * 2000)  # larger than the limit and not the validated bytes: never held in memory
    with pytest.raises(DataChangedError, match=hashlib.sha256(b"x" * 2000).hexdigest()):
        read_verified(path, digest, "0123456789abcdef", 1000)
    big = hashlib.sha256(b"x" * 2000).hexdigest()  # the limit lowered since validation: the same bytes still pass
    assert read_verified(path, big, "0123456789abcdef", 1000) == b"x" * 2000


def test_an_entry_pruned_between_its_check_and_its_use_is_made_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmr cache prune`` in another process may remove an entry clean has just found: a miss, never a crash."""
    import pandas as pd

    from mmretrieval.core.schema import MESSAGE, REASON
    from mmretrieval.stages import clean

    data = png_bytes()
    digest = hashlib.sha256(data).hexdigest()
    entry, made = fetch(CleanedMedia(tmp_path / "cache", params()), data)
    pruned: list[Path] = []
    cache = CleanedMedia(tmp_path / "cache", params())
    real_hash = cache.memo.sha256

    def prune_then_hash(path: Path) -> str:  # the prune lands after get found the files, before they are read
        if not pruned:
            pruned.append(path)
            path.unlink()
        return real_hash(path)

    monkeypatch.setattr(cache.memo, "sha256", prune_then_hash)
    entry2, made2 = fetch(cache, data)
    assert pruned == [entry] and cache.counts() == {"reused": 0, "computed": 1} and made2 == made

    real_place = clean.place

    def prune_then_place(src: Path, target: Path) -> None:  # ... or after clean found the entry, before linking it
        if len(pruned) == 1:
            pruned.append(src)
            src.unlink()
        real_place(src, target)

    monkeypatch.setattr(clean, "place", prune_then_place)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "x.png").write_bytes(data)
    (tmp_path / "media").mkdir()
    rows = pd.DataFrame({"id": ["a"], "modality": ["image"], "path": ["x.png"], "text": ["a red box"],
                         "sha256": [digest], "metadata": [""], REASON: [""], MESSAGE: [""]})
    cache = CleanedMedia(tmp_path / "cache", params())
    out, _ = clean._clean_rows(rows, tmp_path / "raw", tmp_path / "media", params(), "demo", cache, "0" * 32)
    assert len(pruned) == 2 and out.at[0, REASON] == "" and out.at[0, "media_sha256"] == made["media_sha256"]
    assert cache.counts() == {"reused": 0, "computed": 1}
    assert hashlib.sha256((tmp_path / out.at[0, "media"]).read_bytes()).hexdigest() == made["media_sha256"]


@pytest.mark.parametrize("damage", [("suffix", "suffiy"), ("bits", "bitz"), ("media_sha256", "sha")])
def test_a_damaged_sidecar_in_a_pack_is_a_miss_made_again(tmp_path: Path, damage: tuple[str, str]) -> None:
    data = png_bytes()
    first = CleanedMedia(tmp_path, params())
    first.sidecars["image"].open_pack("photos")
    entry, made = fetch(first, data)
    first.sidecars["image"].save_pack()
    pack = first.sidecars["image"].pack_path("photos")
    pack.write_text(pack.read_text(encoding="utf-8").replace(f'"{damage[0]}"', f'"{damage[1]}"', 1),
                    encoding="utf-8")
    again = CleanedMedia(tmp_path, params())
    again.sidecars["image"].open_pack("photos")
    entry2, made2 = fetch(again, data)
    assert again.counts() == {"reused": 0, "computed": 1} and made2 == made
    again.sidecars["image"].save_pack()
    third = CleanedMedia(tmp_path, params())
    third.sidecars["image"].open_pack("photos")
    fetch(third, data)
    assert third.counts() == {"reused": 1, "computed": 0}  # the pack was written whole again
