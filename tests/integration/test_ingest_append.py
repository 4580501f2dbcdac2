"""`mmr ingest --append` / `--remove` against real DVC: every call a new data version holding the full merged manifest
and media, untouched files carried over without a copy, earlier versions checked out again, conflicts stopping a
batch before anything changes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mmretrieval.backends import versioning
from mmretrieval.cli import main
from mmretrieval.core.errors import IngestConflict
from mmretrieval.core.schema import read_manifest
from mmretrieval.runner import run_stage
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import tiny_dataset, write_manifest, write_png

pytestmark = pytest.mark.integration
KEYS = {"dataset", "mode", "rows", "files", "copied", "linked", "not_copied", "added", "replaced", "removed",
        "unchanged", "unknown", "added_ids", "replaced_ids", "removed_ids", "unknown_ids", "changed", "data_version",
        "previous_version", "path"}


def square(i: str, text: str | None = None, path: str | None = None, **extra: str) -> dict[str, str]:
    return {"id": i, "modality": "image", "path": path or f"images/{i}.png", "text": text or f"a square {i}",
            "label": "red", "split": "train", **extra}


def test_appends_and_removals_make_versions_that_check_out_again(workspace: Path, tmp_path: Path) -> None:
    src = tiny_dataset(tmp_path / "src")
    first = ingest(src, "tiny")
    raw = workspace / "data/raw/tiny"
    untouched = os.stat(raw / "images/green2.png").st_ino
    batch = tmp_path / "batch"
    write_png(batch / "images/new0.png", color=(5, 5, 5))
    write_png(batch / "images/new1.png", color=(9, 5, 5))
    write_png(batch / "images/red3.png", color=(1, 2, 3))  # red3: new bytes at its path
    shutil.copyfile(src.parent / "images/blue2.png", batch / "images/blue2.png")  # blue2: the same row again
    rows = [square("new0"), square("new1"), square("red3", "a red square ||| something red"),
            square("blue2", "a blue square ||| something blue", label="blue"),
            square("yellow3", "a caption fixed later", path="images/yellow3.png")]  # file left out: kept
    second = ingest(write_manifest(batch, rows), "tiny", append=True)
    assert set(second) == KEYS
    assert (second["added"], second["replaced"], second["unchanged"], second["removed"]) == (2, 2, 1, 0)
    assert (second["added_ids"], second["replaced_ids"]) == (["new0", "new1"], ["red3", "yellow3"])
    assert (second["rows"], second["files"], second["copied"], second["linked"]) == (18, 18, 3, 15)
    assert second["previous_version"] == first["data_version"] != second["data_version"] == versioning.read_version(raw)
    assert os.stat(raw / "images/green2.png").st_ino == untouched  # carried over by a link: not copied again
    assert (raw / "images/red3.png").read_bytes() == (batch / "images/red3.png").read_bytes()
    assert run_stage("validate", "tiny")["valid"] == 18  # the merged version validates as one dataset
    (tmp_path / "ids.txt").write_text("new1\n# a comment\n\nnot_there\n", encoding="utf-8")
    assert main(["ingest", "--name", "tiny", "--remove", str(tmp_path / "ids.txt")]) == 0
    third = read_manifest(raw / "manifest.csv")
    assert len(third) == 17 and "new1" not in set(third["id"]) and not (raw / "images/new1.png").exists()
    v3 = versioning.read_version(raw)
    versioning.checkout(workspace, raw, first["data_version"])  # any version can be checked out and rebuilt
    assert (raw / "manifest.csv").read_bytes() == src.read_bytes() and not (raw / "images/new0.png").exists()
    versioning.checkout(workspace, raw, second["data_version"])
    assert set(read_manifest(raw / "manifest.csv")["id"]) == set(third["id"]) | {"new1"}
    assert not versioning.is_modified(workspace, raw)
    versioning.checkout(workspace, raw, v3)
    assert versioning.read_version(raw) == v3 and len(read_manifest(raw / "manifest.csv")) == 17


def test_a_conflicting_batch_changes_nothing(workspace: Path, tmp_path: Path) -> None:
    first = ingest(tiny_dataset(tmp_path / "src"), "tiny")
    raw = workspace / "data/raw/tiny"
    before = (raw / "manifest.csv").read_bytes()
    batch = tmp_path / "batch"
    write_png(batch / "images/red2.png", color=(0, 0, 0))  # red2's path, other bytes, another id
    write_png(batch / "images/fresh.png")
    with pytest.raises(IngestConflict, match=r"'images/red2.png'.*'red2'.*'intruder'"):
        ingest(write_manifest(batch, [square("fresh"), square("intruder", path="images/red2.png")]), "tiny",
               append=True)
    assert (raw / "manifest.csv").read_bytes() == before and versioning.read_version(raw) == first["data_version"]
    assert not (raw / "images/fresh.png").exists()
    assert sorted(p.name for p in raw.parent.iterdir()) == ["tiny", "tiny.dvc"]  # no scratch folder left


def test_first_append_identical_rerun_and_removals_that_change_nothing(workspace: Path, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    write_png(batch / "images/a.png")
    write_png(batch / "images/b.png", color=(0, 90, 0))
    manifest = write_manifest(batch, [square("a"), square("b"), square("gone", path="images/gone.png")])
    first = ingest(manifest, "fresh", append=True)  # a dataset that does not exist yet: its first ingest
    assert (first["added"], first["previous_version"], first["not_copied"]) == (3, None, 1)
    again = ingest(manifest, "fresh", append=True)  # the same batch again: nothing changes, same version
    assert (again["unchanged"], again["changed"], again["data_version"]) == (3, False, first["data_version"])
    ids = tmp_path / "ids.txt"
    ids.write_text("zz\n", encoding="utf-8")
    with pytest.raises(IngestConflict, match="nothing changed: none of the 1 id"):
        ingest(None, "fresh", remove=ids)
    ids.write_text("gone\nzz\n", encoding="utf-8")
    out = ingest(None, "fresh", remove=ids)
    assert (out["removed_ids"], out["unknown_ids"], out["not_copied"]) == (["gone"], ["zz"], 0)
    raw = workspace / "data/raw/fresh"
    assert json.loads((raw / "not_copied.json").read_text()) == {}  # the record follows the merged version
    deleted = write_manifest(tmp_path / "del", [square("a", deleted="yes")],
                             ["id", "modality", "path", "text", "deleted"])
    assert ingest(deleted, "fresh", append=True)["removed_ids"] == ["a"]
    assert list(read_manifest(raw / "manifest.csv")["id"]) == ["b"]
    with pytest.raises(IngestConflict, match="add --append"):
        ingest(manifest, "fresh", remove=ids)
