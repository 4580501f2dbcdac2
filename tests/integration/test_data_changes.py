"""Raw data that changes between stages (issue 25) and per-item work reused across data versions (issue 24),
through the real ingest (DVC), validate (GX) and clean stages."""

from __future__ import annotations

import hashlib
import os
import shutil
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from mmretrieval.core.errors import DataChangedError
from mmretrieval.stages import clean, validate
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import good_rows, tiny_dataset, write_manifest, write_png
from tests.helpers.workspace import FAST_PARAMS, mmr

pytestmark = pytest.mark.integration


def test_validate_catches_a_same_size_rewrite_with_its_mtime_put_back(workspace: Path) -> None:
    src = workspace.parent / "src"
    ingest(write_manifest(src, good_rows(src)), "quiet")
    target = workspace / "data/raw/quiet/images/ok2.png"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # one byte inside the PNG, the size unchanged
    with open(target, "r+b") as f:  # in place: the same inode
        f.write(data)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(DataChangedError, match=r"ok2\.png changed after ingest.*md5.*mmr ingest"):
        validate.run("quiet")


def test_clean_stops_on_a_file_replaced_or_deleted_after_validate(workspace: Path) -> None:
    src = workspace.parent / "src"
    ingest(write_manifest(src, good_rows(src)), "moved")
    report = validate.run("moved")
    rows = pd.read_parquet(workspace / "data/validated/moved/rows.parquet").set_index("id")
    raw = workspace / "data/raw/moved/images/ok1.png"
    assert rows.loc["ok1", "sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()  # validate records it
    write_png(raw, color=(90, 90, 90))  # a brick wall where the coffee was
    with pytest.raises(DataChangedError) as changed:
        clean.run("moved")
    message = str(changed.value)
    assert "ok1.png" in message and rows.loc["ok1", "sha256"] in message
    assert hashlib.sha256(raw.read_bytes()).hexdigest() in message and report["data_version"][:12] in message
    assert not (workspace / "data/clean/moved").exists()
    raw.unlink()
    out = mmr("clean", "--dataset", "moved", cwd=workspace)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    last = [line for line in out.stderr.splitlines() if line.startswith("mmr: error:")]
    assert len(last) == 1 and "ok1.png" in last[0] and "the file is gone" in last[0] and "mmr ingest" in last[0]


def _outputs(folder: Path) -> dict[str, bytes]:
    """The clean output's media bytes by name, and its manifest rows."""
    media = {p.name: p.read_bytes() for p in sorted((folder / "media").iterdir())}
    return media | {"manifest": pd.read_parquet(folder / "manifest.parquet").to_csv(index=False).encode()}


def test_validate_and_clean_reuse_per_item_work_across_versions_and_settings(workspace: Path) -> None:
    src = workspace.parent / "src"
    manifest = tiny_dataset(src, per_color=3)  # 12 images
    ingest(manifest, "grow")
    assert validate.run("grow")["computed"] == 12
    first = clean.run("grow")
    assert (first["reused"], first["computed"]) == (0, 12)
    out = workspace / "data/clean/grow"
    before = _outputs(out)
    rows = pd.read_parquet(out / "manifest.parquet")
    for _, row in rows.iterrows():  # what readers verify their bytes against
        assert hashlib.sha256((out / row["media"]).read_bytes()).hexdigest() == row["media_sha256"]
        assert (out / row["media"]).stat().st_nlink == 2  # linked from the cache, not a second copy
    assert validate.run("grow")["reused"] == 12
    again = clean.run("grow")
    assert (again["reused"], again["computed"]) == (12, 0) and _outputs(out) == before
    report = (out / "report.json").read_text(encoding="utf-8")
    assert '"reused": 12' in report and '"computed": 0' in report

    write_png(src / "images/new.png", size=(50, 40), color=(120, 0, 160))  # a new data version with one more item
    extra = manifest.read_text(encoding="utf-8") + "new,image,images/new.png,a purple square,blue,train\n"
    manifest.write_text(extra, encoding="utf-8")
    ingest(manifest, "grow")
    checked = validate.run("grow")
    assert (checked["reused"], checked["computed"]) == (12, 1)
    grown = clean.run("grow")
    assert (grown["reused"], grown["computed"]) == (12, 1) and grown["clean"] == 13

    (workspace / "params.yaml").write_text(FAST_PARAMS + "clean: {image_max_side: 24}\n", encoding="utf-8")
    smaller = clean.run("grow")
    assert (smaller["reused"], smaller["computed"]) == (0, 13)
    with_cache = _outputs(out)
    shutil.rmtree(workspace / "var/cache")  # deleting the cache only costs time
    remade = clean.run("grow")
    assert (remade["reused"], remade["computed"]) == (0, 13) and _outputs(out) == with_cache


def test_ingest_finds_names_in_another_unicode_form_and_copies_them_under_the_manifests(workspace: Path) -> None:
    src = workspace.parent / "src"
    nfc, nfd = (unicodedata.normalize(form, "café crème.png") for form in ("NFC", "NFD"))
    write_png(src / "photos" / nfd, color=(120, 80, 40))  # copied from macOS
    write_png(src / "photos" / unicodedata.normalize("NFC", "thé.png"), color=(20, 80, 40))
    rows = [{"id": "coffee", "modality": "image", "path": f"photos/{nfc}", "text": "a cup of coffee"},
            {"id": "tea", "modality": "image", "path": "photos/" + unicodedata.normalize("NFD", "thé.png"),
             "text": "a cup of tea"},
            {"id": "gone", "modality": "image", "path": "photos/cafe.png", "text": "not there"},
            {"id": "dotted", "modality": "image", "path": "./photos//" + unicodedata.normalize("NFC", "thé.png"),
             "text": "a cup of tea, spelt oddly"}]
    ingest(write_manifest(src, rows), "accents")
    assert (workspace / "data/raw/accents/photos" / nfc).is_file()  # under the manifest's name
    report = validate.run("accents")
    assert report["valid"] == 3 and report["reasons"] == {"missing_file": 1}
    assert clean.run("accents")["merged_duplicates"] == 1  # tea and dotted: one file


def _report(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def test_an_append_reads_only_the_files_new_to_this_machine_and_mmr_rehash_reads_them_all(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests memo (core.digests): validate and clean of an appended version read the batch and the rewritten
    manifest, not the files carried over from the version before; under MMR_REHASH=1 every file is read again, so
    a same-size rewrite whose mtime was put back (which DVC's own check trusts) is caught."""
    monkeypatch.setattr("mmretrieval.core.digests.RACY_S", -1.0)  # files written a moment ago count as settled
    src = workspace.parent / "src"
    ingest(tiny_dataset(src, per_color=3), "grow")  # 12 images
    raw = workspace / "data/raw/grow"
    files = [p for p in raw.rglob("*") if p.is_file()]
    validate.run("grow")
    first = _report(workspace / "data/validated/grow/report.json")
    assert (first["files_read"], first["digests_remembered"]) == (len(files), 0)
    clean.run("grow")

    batch = workspace.parent / "batch"
    write_png(batch / "images/new.png", size=(50, 40), color=(120, 0, 160))
    ingest(write_manifest(batch, [{"id": "new", "modality": "image", "path": "images/new.png",
                                   "text": "a purple square"}]), "grow", append=True)
    others = [p for p in raw.rglob("*") if p.is_file() and p.parent.name != "images"]  # manifest, ingest's notes
    assert validate.run("grow")["computed"] == 1
    grown = _report(workspace / "data/validated/grow/report.json")
    assert (grown["files_read"], grown["digests_remembered"]) == (1 + len(others), 12)
    cleaned = clean.run("grow")
    assert (cleaned["reused"], cleaned["computed"]) == (12, 1)
    report = _report(workspace / "data/clean/grow/report.json")
    assert (report["files_read"], report["digests_remembered"]) == (0, 24)  # 12 raw files, 12 cleaned files

    target = raw / "images/red0.png"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # same size, in place, mtime put back
    with open(target, "r+b") as f:
        f.write(data)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    monkeypatch.setenv("MMR_REHASH", "1")
    with pytest.raises(DataChangedError, match=r"red0\.png changed after ingest"):
        validate.run("grow")
