"""Bad manifests and media through the real ingest (DVC), validate (GX) and clean stages."""

from pathlib import Path

import pandas as pd
import pytest

from mmretrieval.datasets import ingest
from mmretrieval.errors import ManifestError, ValidationFailed
from mmretrieval.prep import clean, validate
from tests.conftest import mmr, write_manifest, write_png


def good_rows(src: Path, n: int = 4) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        write_png(src / "images" / f"ok{i}.png", color=(i * 40, 100, 50))
        rows.append({"id": f"ok{i}", "modality": "image", "path": f"images/ok{i}.png", "text": f"picture {i}"})
    return rows


def test_each_bad_row_is_quarantined_with_its_reason_and_counts_add_up(workspace: Path) -> None:
    src = workspace.parent / "src"
    rows = good_rows(src)
    (src / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows += [
        {"id": "abs", "modality": "image", "path": "/etc/passwd", "text": "x"},
        {"id": "up", "modality": "image", "path": "../outside.png", "text": "x"},
        {"id": "gone", "modality": "image", "path": "images/missing.png", "text": "x"},
        {"id": "corrupt", "modality": "image", "path": "images/corrupt.jpg", "text": "x"},
        {"id": "weird", "modality": "video", "path": "images/ok0.png", "text": "x"},
        {"id": "badsplit", "modality": "image", "path": "images/ok1.png", "text": "x", "split": "holdout"},
    ]
    ingest(write_manifest(src, rows), "bad")
    report = validate.run("bad")
    assert report["rows"] == 10 and report["valid"] == 4
    assert report["reasons"] == {"absolute_path": 1, "parent_path": 1, "missing_file": 1, "undecodable": 1,
                                 "unknown_modality": 1, "unknown_split": 1}
    docs = (workspace / "data/validated/bad/data_docs.html").read_text()
    assert "expect_column_values_to_be_in_set" in docs or "values must belong to this set" in docs
    result = clean.run("bad")
    assert result["input"] == result["clean"] + result["quarantined"] == 10
    quarantine = pd.read_parquet(workspace / "data/clean/bad/quarantine.parquet")
    row = quarantine.set_index("id").loc["corrupt"]
    assert row["reason"] == "undecodable" and "corrupt.jpg" in row["message"]
    assert row["path"] == "images/corrupt.jpg"  # the original row is kept


def test_duplicate_ids_stop_validation_naming_the_ids_and_rows(workspace: Path) -> None:
    src = workspace.parent / "src"
    rows = good_rows(src, 3) + [{"id": "ok1", "modality": "image", "path": "images/ok2.png", "text": "again"}]
    ingest(write_manifest(src, rows), "dups")
    with pytest.raises(ValidationFailed, match=r"'ok1'.*rows 3, 5"):
        validate.run("dups")
    assert not (workspace / "data/validated/dups").exists()


def test_missing_required_column_fails_at_ingest_with_a_one_line_cli_error(workspace: Path) -> None:
    src = workspace.parent / "src"
    manifest = write_manifest(src, [{"id": "a", "path": "x.png"}], columns=["id", "path"])
    with pytest.raises(ManifestError, match="modality"):
        ingest(manifest, "nocol")
    out = mmr("ingest", str(manifest), "--name", "nocol", cwd=workspace)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("mmr: error: manifest")
    assert "modality" in out.stderr and "Traceback" not in out.stderr


def test_validation_refuses_raw_data_changed_since_it_was_versioned(workspace: Path) -> None:
    src = workspace.parent / "src"
    ingest(write_manifest(src, good_rows(src)), "drift")
    write_png(workspace / "data/raw/drift/images/ok0.png", color=(1, 2, 3))
    with pytest.raises(ValidationFailed, match="changed since it was tracked"):
        validate.run("drift")


def test_duplicates_merge_with_their_captions_and_split_leakage_is_resolved(workspace: Path) -> None:
    from PIL import Image, ImageDraw

    src = workspace.parent / "src"
    rows = good_rows(src, 3)
    im = Image.new("RGB", (80, 60), "white")
    ImageDraw.Draw(im).rectangle([10, 10, 40, 50], fill="navy")
    im.save(src / "images/orig.png")
    im.save(src / "images/copy.png")  # same bytes
    im.resize((160, 120)).save(src / "images/big.jpg", quality=90)  # near duplicate
    rows += [
        {"id": "orig", "modality": "image", "path": "images/orig.png", "text": "a navy bar", "split": "train"},
        {"id": "copy", "modality": "image", "path": "images/copy.png", "text": "a blue block", "split": "test"},
        {"id": "big", "modality": "image", "path": "images/big.jpg", "text": "a navy bar", "split": "val"},
        {"id": "long", "modality": "image", "path": "images/ok0.png", "text": "word " * 20_000},
    ]
    ingest(write_manifest(src, rows), "dupes")
    validate.run("dupes")
    result = clean.run("dupes")
    assert result["input"] == result["clean"] + result["quarantined"] + result["merged_duplicates"] == 7
    assert result["merged_duplicates"] == 2 and result["split_leakage_resolved"] == 1
    assert result["reasons"] == {"caption_too_long": 1}
    dupes = pd.read_parquet(workspace / "data/clean/dupes/duplicates.parquet").set_index("id")
    assert dupes.loc["copy", "reason"] == "exact_duplicate" and dupes.loc["big", "reason"] == "near_duplicate"
    assert set(dupes["merged_into"]) == {"orig"}
    survivor = pd.read_parquet(workspace / "data/clean/dupes/manifest.parquet").set_index("id").loc["orig"]
    assert survivor["text"] == "a navy bar ||| a blue block" and survivor["split"] == "train"
