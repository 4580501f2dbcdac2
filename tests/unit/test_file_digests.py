"""File digests remembered by identity (core.digests, issue 24): served again only while the file's device, inode,
size and mtime are the ones remembered; read again otherwise; nothing remembered in the racy window or under
MMR_REHASH=1."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mmretrieval.core.digests import FileDigests

LONG_AGO = 1_600_000_000  # s since the epoch: outside any racy window


def old_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return path


def expected(data: bytes) -> dict[str, str]:
    return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_remembered_digest_is_served_without_reading_and_survives_the_process(tmp_path: Path) -> None:
    f = old_file(tmp_path / "a.jpg", b"first bytes")
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        assert memo.of(f) == expected(b"first bytes")
        assert memo.of(f) == expected(b"first bytes")
        assert memo.counts() == {"files_read": 1, "digests_remembered": 1}
    with FileDigests(tmp_path / "memo.sqlite") as later:  # another run on this machine
        assert later.sha256(f) == hashlib.sha256(b"first bytes").hexdigest()
        assert later.counts() == {"files_read": 0, "digests_remembered": 1}


@pytest.mark.parametrize("change", ["size", "mtime", "inode"])
def test_a_moved_size_mtime_or_inode_reads_the_file_again(tmp_path: Path, change: str) -> None:
    f = old_file(tmp_path / "a.jpg", b"first bytes")
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        memo.of(f)
    if change == "size":
        old_file(f, b"first bytes, longer")
        now = b"first bytes, longer"
    elif change == "mtime":  # same size, other bytes, another mtime
        f.write_bytes(b"other bytes")
        os.utime(f, (LONG_AGO + 5, LONG_AGO + 5))
        now = b"other bytes"
    else:  # same size and mtime put back, but a new file renamed over it
        new = old_file(tmp_path / "b.jpg", b"other bytes")
        os.replace(new, f)
        now = b"other bytes"
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        assert memo.of(f) == expected(now)
        assert memo.counts() == {"files_read": 1, "digests_remembered": 0}


def test_a_file_changed_in_the_racy_window_is_read_but_not_remembered(tmp_path: Path) -> None:
    f = tmp_path / "fresh.jpg"
    f.write_bytes(b"just written")  # mtime: now
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        memo.of(f)
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        memo.of(f)
        assert memo.counts()["files_read"] == 1  # a same-tick rewrite could have followed the first read
    with FileDigests(tmp_path / "memo.sqlite", racy_s=-1.0) as memo:  # no window: remembered at once
        memo.of(f)
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        memo.of(f)
        assert memo.counts() == {"files_read": 0, "digests_remembered": 1}


def test_record_remembers_a_file_this_process_wrote_and_hashed(tmp_path: Path) -> None:
    f = tmp_path / "entry.media"
    f.write_bytes(b"cleaned")
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        memo.record(f, expected(b"cleaned"))
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        assert memo.of(f) == expected(b"cleaned") and memo.counts()["files_read"] == 0


def test_no_memo_reads_every_file_and_a_damaged_memo_is_started_anew(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    f = old_file(tmp_path / "a.jpg", b"bytes")
    blind = FileDigests(None)
    blind.of(f)
    blind.of(f)
    assert blind.counts() == {"files_read": 2, "digests_remembered": 0}
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    with FileDigests(broken) as memo:
        assert memo.of(f) == expected(b"bytes") and memo.of(f) == expected(b"bytes")
        assert memo.counts() == {"files_read": 1, "digests_remembered": 1}
    assert "damaged" in caplog.text and "broken.sqlite" in caplog.text  # the service's log redaction shortens paths


def test_a_memo_that_cannot_be_made_reads_every_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = old_file(tmp_path / "a.jpg", b"bytes")
    (tmp_path / "var").write_text("a file where the memo's folder would be", encoding="utf-8")
    with FileDigests(tmp_path / "var" / "memo.sqlite") as memo:
        memo.of(f)
        memo.of(f)
        assert memo.counts() == {"files_read": 2, "digests_remembered": 0}
    assert "cannot be used" in caplog.text


def test_inode_numbers_beyond_sqlites_signed_integers_are_remembered(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Some network, FUSE and overlay file systems report inode (and device) numbers of 2**63 and above."""
    import types

    import mmretrieval.core.digests as digests

    f = old_file(tmp_path / "a.jpg", b"bytes")
    real = os.stat

    def big(path: object, **kw: object) -> object:
        st = real(path, **kw)
        if kw or os.fspath(path) != str(f):  # anything else (the memo's folder, the database) as it is
            return st
        return types.SimpleNamespace(st_dev=2**64 - 3, st_ino=2**63 + 5, st_size=st.st_size,
                                     st_mtime_ns=st.st_mtime_ns, st_mtime=st.st_mtime)

    monkeypatch.setattr(digests.os, "stat", big)
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        memo.of(f)
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        assert memo.of(f) == expected(b"bytes") and memo.counts() == {"files_read": 0, "digests_remembered": 1}


def test_a_missing_file_raises_and_mmr_rehash_turns_the_memo_off(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mmretrieval.core.settings import get_settings

    with FileDigests(tmp_path / "memo.sqlite") as memo, pytest.raises(FileNotFoundError):
        memo.of(tmp_path / "gone.jpg")
    f = old_file(tmp_path / "a.jpg", b"bytes")
    monkeypatch.setenv("MMR_HOME", str(tmp_path))
    with get_settings().file_digests() as memo:
        memo.of(f)
    assert (tmp_path / "var/cache/file-digests.sqlite").is_file()
    monkeypatch.setenv("MMR_REHASH", "1")
    with get_settings().file_digests() as memo:
        memo.of(f)
        memo.of(f)
        assert memo.counts() == {"files_read": 2, "digests_remembered": 0}


def test_many_files_are_remembered_across_flushes(tmp_path: Path) -> None:
    files = [old_file(tmp_path / f"{i}.bin", str(i).encode()) for i in range(2500)]  # more than one transaction
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        for f in files:
            memo.of(f)
    with FileDigests(tmp_path / "memo.sqlite") as memo:
        got = [memo.sha256(f) for f in files]
        assert memo.counts() == {"files_read": 0, "digests_remembered": 2500}
    assert got == [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2500)]
