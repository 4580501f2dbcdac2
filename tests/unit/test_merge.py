"""Merging a batch into a dataset's manifest (media/merge.py): which rows are added, replaced, kept or removed, where
each file comes from, and the conflicts that stop a merge before anything changes. Real files in a tmp dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmretrieval.core.errors import IngestConflict, ManifestError
from mmretrieval.core.schema import read_manifest
from mmretrieval.media.merge import plan_merge, write_manifest
from tests.helpers.files import write_manifest as write_csv
from tests.helpers.files import write_png

COLUMNS = ["id", "modality", "path", "text", "label", "deleted", "place"]


def image(i: str, path: str | None = None, text: str | None = None, **extra: str) -> dict[str, str]:
    return {"id": i, "modality": "image", "path": path or f"images/{i}.png", "text": text or f"picture {i}", **extra}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The current version: images a, b, c (one colour each), a text row t and a row m whose file was not copied."""
    root = tmp_path / "raw"
    for k, i in enumerate("abc"):
        write_png(root / f"images/{i}.png", color=(40 * k, 90, 200))
    write_csv(root, [image("a"), image("b"), image("c"), {"id": "t", "modality": "text", "text": "words"},
                     image("m", "images/missing.png")], COLUMNS[:5])
    return root


def plan(base: Path, batch_rows: list[dict[str, str]] | None, batch: Path, remove: tuple[str, ...] = ()):  # noqa: ANN201
    missing = {"images/missing.png": {"reason": "missing_file", "message": "gone"}}
    frame = read_manifest(write_csv(batch, batch_rows, COLUMNS)) if batch_rows is not None else None
    return plan_merge("ds", read_manifest(base / "manifest.csv"), base, missing, frame, batch, remove)


def test_new_ids_are_added_changed_ones_replaced_and_identical_ones_left_alone(base: Path, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    shutil.copytree(base / "images", batch / "images", ignore=shutil.ignore_patterns("b.png", "c.png"))  # a: same
    write_png(batch / "images/b.png", color=(1, 2, 3))  # b: new bytes, same path
    write_png(batch / "images/d.png", color=(9, 9, 9))  # d: new id
    rows = [image("a"), image("b"), image("c", text="a better caption"),  # c: caption only, file left out
            {"id": "t", "modality": "text", "text": "other words"}, image("d")]
    p = plan(base, rows, batch)
    assert (p.added, p.replaced, p.unchanged, p.removed) == (["d"], ["b", "c", "t"], 1, [])
    assert p.copy == ["images/b.png", "images/d.png"]  # only new bytes are copied...
    assert p.carry == ["images/a.png", "images/c.png"]  # ...the dataset's own are carried over (c kept its file)
    assert list(p.rows["id"]) == ["a", "b", "c", "t", "m", "d"]  # replaced in place, added at the end
    by_id = p.rows.set_index("id")
    assert by_id.at["c", "text"] == "a better caption" and by_id.at["t", "text"] == "other words"
    assert p.not_copied == {"images/missing.png": {"reason": "missing_file", "message": "gone"}}


def test_ids_are_removed_by_list_and_by_the_deleted_column_and_unknown_ones_reported(base: Path,
                                                                                     tmp_path: Path) -> None:
    rows = [image("c", deleted="Yes"), image("m", deleted="1"), image("nope", deleted="true"),
            {"id": "t", "modality": "text", "text": "words", "deleted": "no"}]
    p = plan(base, rows, tmp_path / "batch", remove=("a", "zz"))
    assert (p.removed, p.unknown, p.added, p.replaced, p.unchanged) == (["a", "c", "m"], ["zz", "nope"], [], [], 1)
    assert list(p.rows["id"]) == ["b", "t"]
    assert p.carry == ["images/b.png"] and p.copy == [] and p.not_copied == {}  # m's record went with it
    assert p.changed


def test_remove_only_and_an_identical_batch(base: Path, tmp_path: Path) -> None:
    p = plan(base, None, tmp_path / "none", remove=("b",))
    assert (p.removed, list(p.rows["id"])) == (["b"], ["a", "c", "t", "m"])
    same = tmp_path / "same"
    shutil.copytree(base / "images", same / "images")
    p = plan(base, [image("a"), image("b")], same)
    assert (p.added, p.replaced, p.unchanged, p.changed) == ([], [], 2, False)


def test_a_path_holding_other_bytes_for_another_id_is_a_conflict_naming_both(base: Path, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    write_png(batch / "images/b.png", color=(1, 2, 3))
    with pytest.raises(IngestConflict, match=r"path 'images/b.png' .* id 'b' .* id 'new'"):
        plan(base, [image("new", "images/b.png")], batch)
    with pytest.raises(IngestConflict, match=r"'images/c.png'.*id 'c'.*no file"):  # the batch has no file there
        plan(base, [image("new", "images/c.png")], batch)
    shutil.copyfile(base / "images/b.png", batch / "images/b.png")  # the same bytes: two ids may share a file
    p = plan(base, [image("new", "images/b.png")], batch)
    assert p.added == ["new"] and "images/b.png" in p.carry and p.copy == []


def test_a_batch_row_whose_file_is_missing_is_kept_and_recorded(base: Path, tmp_path: Path) -> None:
    p = plan(base, [image("e", "images/e.png")], tmp_path / "batch")
    assert p.added == ["e"] and p.not_copied["images/e.png"]["reason"] == "missing_file"


@pytest.mark.parametrize(("rows", "remove", "message"), [
    ([image("x"), image("x")], (), "several rows"),
    ([image("")], (), "empty id"),
    ([image("a")], ("a",), "both in the batch and to be removed"),
])
def test_ids_that_cannot_be_merged_are_refused(base: Path, tmp_path: Path, rows: list[dict[str, str]],
                                               remove: tuple[str, ...], message: str) -> None:
    shutil.copytree(base / "images", tmp_path / "batch" / "images")
    with pytest.raises(IngestConflict, match=message):
        plan(base, rows, tmp_path / "batch", remove)


def test_a_deleted_value_that_is_neither_true_nor_false_is_refused(base: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="deleted must be .* got 'maybe'"):
        plan(base, [image("a", deleted="maybe")], tmp_path / "batch")


def test_the_merged_manifest_reads_back_to_the_same_rows_with_every_extra_column(base: Path, tmp_path: Path) -> None:
    batch = tmp_path / "batch"
    write_png(batch / "images/d.png")
    p = plan(base, [image("d", place="Paris, France")], batch)
    write_manifest(p.rows, tmp_path / "merged.csv")
    back = read_manifest(tmp_path / "merged.csv")
    assert back.drop(columns="metadata").equals(p.rows.drop(columns="metadata").reset_index(drop=True))
    assert '"place": "Paris, France"' in back.set_index("id").at["d", "metadata"]
    assert "deleted" not in back.set_index("id").at["d", "metadata"]
