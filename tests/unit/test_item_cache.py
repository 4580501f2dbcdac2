"""Array entries of the item cache (vectors, regions, backbone features), the byte checks of clean media files, and
progress lines over batches."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.core.array_cache import ArrayCache
from mmretrieval.core.cache import fingerprint
from mmretrieval.core.errors import DataChangedError, MMRError, ValidationFailed
from mmretrieval.core.integrity import item_digest, verify_file, verify_files


def test_an_entry_comes_back_bit_for_bit_and_only_under_its_own_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(384).astype(np.float32)
    regions = rng.standard_normal((9, 64)).astype(np.float16)
    cache = ArrayCache(tmp_path, "vectors", fingerprint({"model": "m", "version": "1"}))
    key = cache.key(item_digest("image", "ab" * 32))
    assert cache.load(key) is None
    cache.save(key, vector=vector, regions=regions, times=np.array([0.5, 1.25]))
    entry = cache.load(key)
    assert entry is not None and set(entry) == {"vector", "regions", "times"}
    assert entry["vector"].dtype == np.float32 and entry["vector"].tobytes() == vector.tobytes()
    assert entry["regions"].dtype == np.float16 and entry["regions"].tobytes() == regions.tobytes()
    assert cache.counts() == {"reused": 1, "computed": 1}
    # other bytes, another modality, another model version: other keys, nothing served
    assert cache.load(cache.key(item_digest("image", "cd" * 32))) is None
    assert cache.load(cache.key(item_digest("video", "ab" * 32))) is None
    other = ArrayCache(tmp_path, "vectors", fingerprint({"model": "m", "version": "2"}))
    assert other.load(other.key(item_digest("image", "ab" * 32))) is None


def test_a_killed_writer_leaves_no_entry(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, "vectors", fingerprint("s"))
    key = cache.key("image:" + "ef" * 32)
    target = cache.path(key)
    target.parent.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:  # the writer: half an entry written, then killed without any clean-up
        def half(tmp: Path) -> None:
            tmp.write_bytes(b"PK\x03\x04 half an entry")
            os.kill(os.getpid(), 9)

        cache.put(key, half)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    assert not target.exists() and cache.load(key) is None
    leftovers = list(target.parent.glob(".*.tmp*"))
    assert len(leftovers) == 1  # a temporary file of the killed writer, which nothing reads
    old = time.time() - 7200
    os.utime(leftovers[0], (old, old))
    assert cache.sweep() == 1 and not list(target.parent.iterdir())
    # an exception inside the writer: no entry either, and its temporary file is gone at once
    with pytest.raises(RuntimeError):
        cache.put(key, lambda tmp: (tmp.write_bytes(b"half"), (_ for _ in ()).throw(RuntimeError("disk full"))))
    assert cache.load(key) is None and not list(target.parent.iterdir())


def test_an_unreadable_entry_is_a_miss_that_is_written_again(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, "features", fingerprint("s"))
    key = cache.key("image:" + "01" * 32)
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_bytes(b"not an npz file")
    assert cache.load(key) is None
    cache.save(key, eval=np.ones(3, np.float32))
    assert cache.load(key)["eval"].tolist() == [1.0, 1.0, 1.0]


def test_byte_checks_name_the_changed_or_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "media" / "red0.png"
    f.parent.mkdir()
    f.write_bytes(b"the recorded bytes")
    recorded = hashlib.sha256(b"the recorded bytes").hexdigest()
    assert verify_file(f, recorded) == recorded
    assert verify_file(f) == recorded  # nothing recorded: the digest, nothing checked
    f.write_bytes(b"the recorded bytez")
    with pytest.raises(DataChangedError, match=r"red0\.png changed since the clean data version") as e:
        verify_file(f, recorded)
    assert isinstance(e.value, ValidationFailed) and isinstance(e.value, MMRError) and "\n" not in str(e.value)
    assert verify_files([f], [""]) == 0  # no digest recorded: not checked
    f.unlink()
    with pytest.raises(DataChangedError, match=r"red0\.png is gone"):
        verify_files([f], [recorded])


def test_progress_counts_the_items_of_batches_and_logs_lines_without_a_terminal(
        caplog: pytest.LogCaptureFixture) -> None:
    from mmretrieval.core.progress import progress

    batches = [list(range(32)), list(range(32)), list(range(8))]
    with caplog.at_level("INFO", logger="mmretrieval.progress"):
        seen = list(progress(iter(batches), "embed demo image", total=72, size=len, every=0))
    assert seen == batches
    lines = [r.getMessage() for r in caplog.records if r.name == "mmretrieval.progress"]
    assert lines[0].startswith("embed demo image: 32/72 items (44%)") and "items/s" in lines[0] and "left" in lines[0]
    assert lines[2].startswith("embed demo image: 72/72 items (100%)") and len(lines) == 4  # + the closing line
