"""Bad manifests and media through the real ingest (DVC), validate (GX) and clean stages."""

import json
from pathlib import Path

import pandas as pd
import pytest

from mmretrieval.core.errors import DatasetNotFoundError, ManifestError, ValidationFailed
from mmretrieval.stages import clean, validate
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import good_rows, png_declaring, write_manifest, write_png
from tests.helpers.pages import assets
from tests.helpers.workspace import mmr

pytestmark = pytest.mark.integration


def test_each_bad_row_is_quarantined_with_its_reason_and_counts_add_up(workspace: Path) -> None:
    src = workspace.parent / "src"
    rows = good_rows(src)
    (src / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows += [
        {"id": "abs", "modality": "image", "path": "/etc/passwd", "text": "x"},
        {"id": "up", "modality": "image", "path": "../outside.png", "text": "x"},
        {"id": "gone", "modality": "image", "path": "images/missing.png", "text": "x"},
        {"id": "corrupt", "modality": "image", "path": "images/corrupt.jpg", "text": "x"},
        {"id": "weird", "modality": "smell", "path": "images/ok0.png", "text": "x"},
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
    with pytest.raises(ValidationFailed, match=r"'ok1'.*rows 3, 5.*data docs: .*data_docs.html"):
        validate.run("dups")
    # the failed validation's page is written (offline, see test_data_docs.py), and no data for later stages
    out = workspace / "data/validated/dups"
    page = (out / "data_docs.html").read_text(encoding="utf-8")
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "'ok1'" in report["errors"][0]
    assert assets(page).loads == []
    assert 'class="mmr-fail">failed</span>' in page and "The pipeline stopped here" in page and "ok1" in page
    assert "expect_column_values_to_be_unique</code></td><td>column=&#x27;id&#x27;</td><td class=\"mmr-fail\">" \
           "failed" in page
    assert "Not run: the suite failed hard" in page
    assert not (out / "rows.parquet").exists()
    with pytest.raises(DatasetNotFoundError):
        clean.run("dups")  # nothing downstream runs on data that failed


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
    im = Image.new("RGB", (128, 96), "white")
    ImageDraw.Draw(im).rectangle([16, 16, 64, 80], fill="navy")
    im.save(src / "images/orig.png")
    im.save(src / "images/copy.png")  # same bytes
    im.resize((256, 192)).save(src / "images/big.jpg", quality=90)  # near duplicate
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


def test_every_kind_of_bad_or_odd_file_gets_a_verdict_and_none_crashes(workspace: Path) -> None:
    from PIL import Image

    src = workspace.parent / "src"
    img = src / "img"
    img.mkdir(parents=True)
    def marked(mode: str, size: tuple[int, int], fill: object, mark: object) -> Image.Image:
        im = Image.new(mode, size, fill)  # type: ignore[arg-type]
        im.paste(mark, (8, 8, 24, 24))  # type: ignore[arg-type]  # a picture, not a blank
        return im

    marked("RGB", (64, 48), (10, 120, 200), (240, 240, 0)).save(img / "full.jpg", quality=95)
    (img / "truncated.jpg").write_bytes((img / "full.jpg").read_bytes()[:200])
    (img / "zero.jpg").write_bytes(b"")
    (img / "text.jpg").write_text("I am a text file, not a JPEG")
    (img / "bomb.png").write_bytes(png_declaring(30000, 30000))
    marked("CMYK", (40, 40), (0, 200, 100, 0), (200, 0, 0, 0)).save(img / "cmyk.jpg")
    marked("I;16", (40, 40), 40000, 9000).save(img / "deep.png")
    marked("RGB", (40, 40), (30, 60, 200), (250, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        img / "palette.png")
    marked("RGBA", (40, 40), (200, 0, 0, 128), (0, 0, 200, 255)).save(img / "rgba.png")
    frames = [marked("RGB", (40, 40), c, (0, 0, 0)) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(img / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.new("RGB", (40, 40), (250, 250, 250)).save(img / "blank.png")
    outside = workspace.parent / "secret.png"
    write_png(outside)
    (img / "link.png").symlink_to(outside)
    names = ["full.jpg", "truncated.jpg", "zero.jpg", "text.jpg", "bomb.png", "cmyk.jpg", "deep.png", "palette.png",
             "rgba.png", "anim.gif", "link.png", "blank.png"]
    rows = [{"id": n.split(".")[0], "modality": "image", "path": f"img/{n}", "text": f"picture {n}"} for n in names]
    rows += [{"id": "notext", "modality": "text", "path": "", "text": "   "},
             {"id": "rtl", "modality": "text", "path": "", "text": "مرحبا بالعالم 👋\x07 ok"}]
    ingest(write_manifest(src, rows), "odd")
    report = validate.run("odd")
    reasons = pd.read_parquet(workspace / "data/validated/odd/rows.parquet").set_index("id")["reason"].to_dict()
    assert reasons == {"full": "", "truncated": "undecodable", "zero": "empty_file", "text": "undecodable",
                       "bomb": "decompression_bomb", "cmyk": "", "deep": "", "palette": "", "rgba": "", "anim": "",
                       "link": "path_escape", "notext": "empty_text", "rtl": "", "blank": "blank_image"}
    assert report["valid"] == 7
    result = clean.run("odd")
    assert result["input"] == result["clean"] + result["quarantined"] + result["merged_duplicates"] == 14
    clean_rows = pd.read_parquet(workspace / "data/clean/odd/manifest.parquet").set_index("id")
    assert clean_rows.loc["rtl", "text"] == "مرحبا بالعالم 👋 ok"
    for name in ("cmyk", "deep", "palette", "rgba", "anim"):
        with Image.open(workspace / "data/clean/odd" / clean_rows.loc[name, "media"]) as im:
            assert im.mode == "RGB"


def test_a_manifest_without_train_rows_is_resplit_from_the_ratios(workspace: Path) -> None:
    src = workspace.parent / "src"
    rows = [dict(r, split="test") for r in good_rows(src, 20)]
    ingest(write_manifest(src, rows), "alltest")
    report = validate.run("alltest")
    splits = pd.read_parquet(workspace / "data/validated/alltest/rows.parquet")["split"]
    assert "train" in set(splits) and splits.isin(["train", "val", "test"]).all()
    assert report["valid"] == 20


def test_labels_outside_the_configured_set_are_quarantined(workspace: Path) -> None:
    (workspace / "params.yaml").write_text((workspace / "params.yaml").read_text()
                                          + "\noverrides: {pets: {validate: {labels: [cat, dog]}}}\n")
    src = workspace.parent / "src"
    rows = [dict(r, label=lab) for r, lab in zip(good_rows(src, 3), ["cat", "bird", ""], strict=True)]
    ingest(write_manifest(src, rows), "pets")
    report = validate.run("pets")
    assert report["reasons"] == {"unknown_label": 1}
    row = pd.read_parquet(workspace / "data/validated/pets/rows.parquet").set_index("id").loc["ok1"]
    assert row["reason"] == "unknown_label" and "'bird'" in row["message"]


def test_rows_beyond_the_index_limits_are_caught_at_validation_not_at_publish(workspace: Path) -> None:
    """The limits come from the collection schema (mmretrieval.backends.index); ids stop the run, other fields
    quarantine."""
    src = workspace.parent / "src"
    rows = good_rows(src, 3)
    columns = ["id", "modality", "path", "text", "label", "split", "notes"]
    for rel in ("long_label", "huge_notes", "nul_text", "nul_notes", "ok_notes"):
        write_png(src / "images" / f"{rel}.png", color=(len(rel) * 9, 10, 10))
    rows += [
        {"id": "long_label", "modality": "image", "path": "images/long_label.png", "text": "x", "label": "é" * 300},
        {"id": "huge_notes", "modality": "image", "path": "images/huge_notes.png", "text": "x", "notes": "n" * 70_000},
        {"id": "nul_text", "modality": "image", "path": "images/nul_text.png", "text": "a\x00b"},  # clean fixes it
        {"id": "nul_notes", "modality": "image", "path": "images/nul_notes.png", "text": "x", "notes": "a\x00b"},
        {"id": "ok_notes", "modality": "image", "path": "images/ok_notes.png", "text": "x", "notes": "n" * 60_000},
        {"id": "words", "modality": "text", "path": "", "text": " ||| ".join(["w" * 1000] * 70)},  # short captions
    ]
    ingest(write_manifest(src, rows, columns), "limits")
    validate.run("limits")
    verdict = pd.read_parquet(workspace / "data/validated/limits/rows.parquet").set_index("id")
    assert verdict["reason"].to_dict() == {"ok0": "", "ok1": "", "ok2": "", "long_label": "field_too_long",
                                           "huge_notes": "metadata_too_large", "nul_text": "",
                                           "nul_notes": "nul_character", "ok_notes": "",
                                           "words": "caption_too_long"}
    assert "label is 600 bytes, above the index's 512-byte limit" in verdict.loc["long_label", "message"]
    assert "70013 bytes of metadata JSON" in verdict.loc["huge_notes", "message"]

    long_id = "i" * 665
    write_manifest(src, good_rows(src, 2) + [{"id": long_id, "modality": "text", "path": "", "text": "hello"}])
    ingest(src / "manifest.csv", "longid")
    with pytest.raises(ValidationFailed, match=r"512-byte primary key.*row 4: 'i{40}'… \(665 bytes\)"):
        validate.run("longid")
    out = mmr("validate", "--dataset", "longid", cwd=workspace)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("mmr: error: dataset 'longid': 1 id(s) do not fit")
    assert not (workspace / "data/validated/longid/rows.parquet").exists()  # only the failed page and report


@pytest.mark.parametrize("header", ["id,modality,path,text,text ", "id,modality,path,text,text", "id,id,modality,path"])
def test_colliding_header_names_are_refused_at_ingest_naming_them(workspace: Path, header: str) -> None:
    src = workspace.parent / "src"
    src.mkdir()
    width = header.count(",") + 1
    (src / "manifest.csv").write_text(header + "\n" + ",".join(["a", "text", "", "hello", "again"][:width]) + "\n")
    out = mmr("ingest", str(src / "manifest.csv"), "--name", "clash", cwd=workspace)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mmr: error: manifest") and "mean the same column" in last
    names = header.split(",")
    repeated = next(n for n in names if names.count(n) > 1 or n.strip() != n)
    assert repr(repeated) in last
    assert not (workspace / "data/raw/clash").exists()


def test_a_manifest_sha256_is_checked_and_a_windows_separator_still_finds_the_file(workspace: Path) -> None:
    from mmretrieval.core.io import sha256_file

    src = workspace.parent / "src"
    rows = good_rows(src)
    right = sha256_file(src / "images/ok0.png")
    rows[0]["sha256"] = right.upper()  # hex case does not matter
    rows[1]["sha256"] = "0" * 64  # not this file's
    rows[2]["sha256"] = "abc"  # not a digest at all
    rows[3]["path"] = "images\\ok3.png"  # a Windows separator: ingest copies it, validate and clean find it
    ingest(write_manifest(src, rows, ["id", "modality", "path", "text", "sha256"]), "hashes")
    report = validate.run("hashes")
    assert report["valid"] == 2 and report["reasons"] == {"sha256_mismatch": 2}
    result = clean.run("hashes")
    assert result["clean"] == 2 and result["quarantined"] == 2
    clean_rows = pd.read_parquet(workspace / "data/clean/hashes/manifest.parquet").set_index("id")
    assert clean_rows.loc["ok0", "sha256"] == right and set(clean_rows.index) == {"ok0", "ok3"}
