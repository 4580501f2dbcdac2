"""Copying a manifest's files without following links (an openat walk with O_NOFOLLOW) and finding names written
in another Unicode normalisation form (issue 25)."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest

from mmretrieval.core.errors import UnsafePathError
from mmretrieval.media import files
from mmretrieval.media.files import Problem, copy_inside, locate, open_inside, path_problem

NFC = unicodedata.normalize("NFC", "café.png")
NFD = unicodedata.normalize("NFD", "café.png")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``root/sub/a.bin`` inside, ``outside/a.bin`` (the secret) beside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.bin").write_bytes(b"inside")
    (outside / "a.bin").write_bytes(b"SECRET")
    return root, outside


def test_a_folder_that_is_a_symlink_to_outside_is_refused_by_the_walk(tree: tuple[Path, Path], tmp_path: Path
                                                                      ) -> None:
    root, outside = tree
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="'link'.*symbolic link"):
        open_inside(root, "link/a.bin")
    with pytest.raises(UnsafePathError, match="outside the dataset root"):
        copy_inside(root, "link/a.bin", tmp_path / "copy.bin")
    assert not (tmp_path / "copy.bin").exists()


def test_a_folder_swapped_for_a_symlink_between_check_and_copy_copies_nothing(
        tree: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, outside = tree
    assert path_problem("sub/a.bin", root) is None  # what ingest checks first
    real_locate = files.locate

    def locate_then_swap(rel: str, where: Path, match_forms: bool = True) -> object:
        found = real_locate(rel, where, match_forms)  # the check passes on the real folder ...
        (root / "sub").rename(root / "old")  # ... then the attacker swaps it for a link out
        (root / "sub").symlink_to(outside, target_is_directory=True)
        return found

    monkeypatch.setattr(files, "locate", locate_then_swap)
    target = tmp_path / "copy.bin"
    with pytest.raises(UnsafePathError, match="changed since it was checked"):
        copy_inside(root, "sub/a.bin", target)
    assert not target.exists() or target.read_bytes() != b"SECRET"


def test_a_file_swapped_for_a_symlink_or_a_fifo_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "sub" / "a.bin").unlink()
    (root / "sub" / "a.bin").symlink_to(outside / "a.bin")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_inside(root, "sub/a.bin")
    os.mkfifo(root / "sub" / "pipe")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        open_inside(root, "sub/pipe")  # never blocks waiting for a writer


def test_a_plain_file_and_a_link_that_stays_inside_are_copied(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    (root / "alias.bin").symlink_to(root / "sub" / "a.bin")
    for rel in ("sub/a.bin", "alias.bin"):
        target = tmp_path / rel.replace("/", "_")
        found = copy_inside(root, rel, target)
        assert target.read_bytes() == b"inside" and found.physical == "sub/a.bin" and not found.renamed


@pytest.mark.parametrize(("manifest_name", "disk_name"), [(NFC, NFD), (NFD, NFC)])
def test_a_name_in_another_unicode_form_is_found_when_exactly_one_fits(
        tmp_path: Path, manifest_name: str, disk_name: str) -> None:
    root = tmp_path / "root"
    folder = unicodedata.normalize("NFD" if disk_name == NFD else "NFC", "Fotos é")
    (root / folder).mkdir(parents=True)
    (root / folder / disk_name).write_bytes(b"png")
    rel = unicodedata.normalize("NFC" if manifest_name == NFC else "NFD", "Fotos é") + "/" + manifest_name
    assert rel != f"{folder}/{disk_name}"
    assert path_problem(rel, root) is None
    target = tmp_path / "copy.png"
    found = copy_inside(root, rel, target)
    assert found.renamed and found.rel == f"{folder}/{disk_name}" and target.read_bytes() == b"png"
    strict = path_problem(rel, root, match_forms=False)  # validate on data/raw: a hint, not a silent match
    assert strict is not None and strict.reason == "missing_file" and "mmr ingest" in strict.message
    assert "Unicode" in strict.message


def test_several_or_no_names_that_fit_are_said_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    nfc, nfd = unicodedata.normalize("NFC", "éé.png"), unicodedata.normalize("NFD", "éé.png")
    mixed = nfc[0] + nfd[2:]  # the same text, neither form
    assert unicodedata.normalize("NFC", mixed) == nfc and mixed not in (nfc, nfd)
    (root / nfc).write_bytes(b"1")
    (root / nfd).write_bytes(b"2")
    assert path_problem(nfc, root) is None and path_problem(nfd, root) is None  # an exact name always wins
    several = locate(mixed, root)
    assert isinstance(several, Problem) and several.reason == "ambiguous_file"
    assert "NFC" in several.message and "NFD" in several.message
    (root / "ﬁle.png").write_bytes(b"3")  # a compatibility ligature: not the same text, but a likely cause
    none = path_problem("file.png", root)
    assert none is not None and none.reason == "missing_file" and "ﬁle.png" in none.message
    with pytest.raises(UnsafePathError, match="ambiguous|same text"):
        copy_inside(root, mixed, tmp_path / "x")
