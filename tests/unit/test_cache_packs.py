"""Packs of small JSON entries (core.cache.ItemCache.open_pack / recall / save_pack, issue 24): one file read per run
instead of one per item, never a value for another key, scope or setting, and a lost pack only costs time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmretrieval.core.cache import ItemCache, fingerprint


def cache(root: Path, setting: int = 1) -> ItemCache:
    return ItemCache(root, "validate-media", fingerprint({"max_file_bytes": setting}), ".json")


def test_a_saved_pack_serves_its_entries_without_their_files(tmp_path: Path) -> None:
    first = cache(tmp_path)
    assert first.open_pack("photos") == 0
    keys = [first.key(f"{i:064x}") for i in range(5)]
    for i, key in enumerate(keys):
        first.remember(key, {"reason": "", "message": f"item {i}"})
    assert first.save_pack() == 5
    for key in keys[:3]:  # pruned entry files: the pack still knows their (content-addressed) values
        first.path(key).unlink()
    later = cache(tmp_path)
    assert later.open_pack("photos") == 5
    assert [later.recall(k) for k in keys] == [{"reason": "", "message": f"item {i}"} for i in range(5)]
    assert later.recall(later.key("f" * 64)) is None


def test_a_pack_holds_what_the_last_run_used_and_marks_use_on_the_entries(tmp_path: Path) -> None:
    import os

    run1 = cache(tmp_path)
    run1.open_pack("photos")
    keep, drop = run1.key("a" * 64), run1.key("b" * 64)
    run1.remember(keep, {"v": 1})
    run1.remember(drop, {"v": 2})
    run1.save_pack()
    os.utime(run1.path(keep), (1_000_000, 1_000_000))
    run2 = cache(tmp_path)
    run2.open_pack("photos")
    assert run2.recall(keep) == {"v": 1}
    assert run2.path(keep).stat().st_mtime > 1_000_000  # a pack hit is a use: pruning sees it
    assert run2.save_pack() == 1
    assert json.loads(run2.pack_path("photos").read_text(encoding="utf-8")) == {keep: {"v": 1}}


def test_packs_are_per_scope_and_per_setting_and_a_broken_pack_falls_back_to_the_files(tmp_path: Path) -> None:
    a = cache(tmp_path)
    a.open_pack("photos")
    key = a.key("c" * 64)
    a.remember(key, {"v": "photos"})
    a.save_pack()
    assert cache(tmp_path).open_pack("sounds") == 0  # another dataset's pack is its own
    other = cache(tmp_path, setting=2)
    assert other.open_pack("photos") == 0 and other.recall(other.key("c" * 64)) is None  # other settings, other keys
    a.pack_path("photos").write_text("{not json", encoding="utf-8")
    b = cache(tmp_path)
    assert b.open_pack("photos") == 0 and b.recall(key) == {"v": "photos"}  # read from the entry's own file
    b.path(key).unlink()
    assert b.recall(key) is None


def test_without_an_open_pack_nothing_is_recorded_or_written(tmp_path: Path) -> None:
    c = cache(tmp_path)
    c.remember(c.key("d" * 64), {"v": 0})
    assert c.save_pack() == 0 and not (c.folder / "packs").exists()


def test_an_array_pack_serves_the_entries_of_the_common_layout_bit_for_bit(tmp_path: Path) -> None:
    import numpy as np

    from mmretrieval.core.array_cache import ArrayCache

    rng = np.random.default_rng(0)
    run1 = ArrayCache(tmp_path, "vectors", fingerprint({"model": "m"}))
    run1.open_pack("photos.shard-0")
    keys = [run1.key(f"{i:064x}") for i in range(6)]
    vectors = rng.standard_normal((6, 8)).astype(np.float32)
    for key, v in zip(keys[:5], vectors, strict=False):
        run1.save(key, vector=v)
    run1.save(keys[5], vector=vectors[5], frame_times=np.array([0.5, 1.0]))  # another layout: files only
    assert run1.save_pack() == 5
    for key in keys:
        run1.path(key).unlink()  # pruned files: the pack still serves its five
    run2 = ArrayCache(tmp_path, "vectors", fingerprint({"model": "m"}))
    assert run2.open_pack("photos.shard-0") == 5
    got = [run2.load(k) for k in keys]
    assert [g["vector"].tobytes() for g in got[:5]] == [v.tobytes() for v in vectors[:5]]
    assert got[5] is None and run2.counts() == {"reused": 5, "computed": 0}
    other = ArrayCache(tmp_path, "vectors", fingerprint({"model": "m2"}))  # another model: another pack
    assert other.open_pack("photos.shard-0") == 0 and other.load(keys[0]) is None
    run2.pack_path("photos.shard-0").write_bytes(b"not a zip")
    assert ArrayCache(tmp_path, "vectors", fingerprint({"model": "m"})).open_pack("photos.shard-0") == 0


def test_a_damaged_entry_or_pack_value_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    c = cache(tmp_path)
    c.open_pack("photos")
    broken, listed = c.key("e" * 64), c.key("f" * 64)
    c.remember(broken, {"reason": "", "message": ""})
    c.path(broken).write_bytes(b"\xff\xfe not json")
    assert c.recall(broken) is None
    c.pack_path("photos").parent.mkdir(parents=True, exist_ok=True)
    c.pack_path("photos").write_text(json.dumps({listed: ["not", "an", "object"]}), encoding="utf-8")
    later = cache(tmp_path)
    assert later.open_pack("photos") == 1 and later.recall(listed) is None


def test_a_pack_that_cannot_be_written_is_skipped_with_a_warning(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    c = cache(tmp_path)
    c.open_pack("photos")
    c.remember(c.key("a" * 64), {"v": 1})
    (c.folder / "packs").write_text("a file where the packs' folder would be", encoding="utf-8")
    assert c.save_pack() == 0 and "not written" in caplog.text


def test_damaged_array_packs_are_misses_whatever_the_damage(tmp_path: Path) -> None:
    import random

    import numpy as np

    from mmretrieval.core.array_cache import ArrayCache

    def fresh() -> ArrayCache:
        return ArrayCache(tmp_path, "vectors", fingerprint({"model": "m"}))

    first = fresh()
    first.open_pack("s")
    keys = [first.key(f"{i:064x}") for i in range(20)]
    for i, key in enumerate(keys):
        first.save(key, vector=np.full(16, i, dtype=np.float32))
    first.save_pack()
    pack = first.pack_path("s")
    good = pack.read_bytes()
    rng = random.Random(0)
    for _ in range(300):  # flipped bits anywhere, headers included
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        pack.write_bytes(bytes(damaged))
        c = fresh()
        c.open_pack("s")
        got = c.load(keys[3])
        assert got is None or got["vector"].shape == (16,)
    with open(pack, "wb") as f:  # a .npy in the pack's place
        np.save(f, np.zeros(3))
    assert fresh().open_pack("s") == 0
    np.savez(pack, keys=np.arange(3), vector=np.zeros((3, 2)))  # keys of the wrong type
    assert fresh().open_pack("s") == 0
