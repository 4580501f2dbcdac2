"""Reporting and pruning the per-item caches (``mmr cache info|prune``, :mod:`mmretrieval.core.cache_admin`): reads
count as use, age and size limits, kinds, dry runs, the grace of entries in use, and readers racing a prune. Real
entries in real folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.core import cache_admin
from mmretrieval.core.array_cache import ArrayCache
from mmretrieval.core.cache import ItemCache, fingerprint
from mmretrieval.core.errors import CacheError, MMRError

DAY = 86400.0


def aged(cache: ItemCache, key: str, seconds: float) -> None:
    """Make the entry ``key`` look last used ``seconds`` ago."""
    when = time.time() - seconds
    os.utime(cache.path(key), (when, when))


def entries(cache: ArrayCache, n: int, seed: int = 0) -> list[str]:
    """``n`` entries of 256 float32 each (equal sizes), keys in order of creation."""
    rng = np.random.default_rng(seed)
    keys = [cache.key(f"image:{seed:02d}{i:062d}") for i in range(n)]
    for key in keys:
        cache.save(key, vector=rng.standard_normal(256).astype(np.float32))
    return keys


def test_a_hit_refreshes_the_entry_s_last_use_and_a_miss_creates_nothing(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, "vectors", fingerprint("m"))
    [key] = entries(cache, 1)
    aged(cache, key, 10 * DAY)
    assert cache.load(key) is not None
    assert time.time() - cache.path(key).stat().st_mtime < 60
    missing = cache.key("image:" + "f" * 64)
    assert cache.get(missing) is None and not cache.path(missing).exists()


@pytest.mark.parametrize("read_the_oldest", [True, False])
def test_a_size_prune_removes_the_least_recently_used_not_the_least_recently_written(
        tmp_path: Path, read_the_oldest: bool) -> None:
    cache = ArrayCache(tmp_path, "vectors", fingerprint("m"))
    first, second, third = entries(cache, 3)
    for key, days in ((first, 3), (second, 2), (third, 1)):
        aged(cache, key, days * DAY)
    if read_the_oldest:  # written first, but read just now: the most recently used
        assert cache.load(first) is not None
    budget = cache.path(first).stat().st_size * 2
    result = cache_admin.prune(tmp_path, max_size=budget, grace_s=0)
    gone = second if read_the_oldest else first
    assert [k for k in (first, second, third) if not cache.path(k).exists()] == [gone]
    assert (result["removed"], result["kept"], result["kept_bytes"]) == (1, 2, budget)
    assert result["kinds"]["vectors"]["removed_bytes"] == budget // 2 and not result["over_budget"]


def test_an_age_prune_removes_entries_unused_for_longer_and_old_temporary_files(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, "vectors", fingerprint("m"))
    old, recent, new = entries(cache, 3)
    aged(cache, old, 40 * DAY)
    aged(cache, recent, 10 * DAY)
    shard = cache.path(new).parent
    stale, fresh = shard / f".{new[:16]}.abc.tmp.npz", shard / f".{new[:16]}.def.tmp.npz"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"writing")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    before = cache_admin.info(tmp_path)["kinds"]["vectors"]
    assert (before["entries"], before["tmp_files"], before["tmp_bytes"]) == (3, 2, 11)
    result = cache_admin.prune(tmp_path, older_than=cache_admin.parse_age("30d"))
    assert not cache.path(old).exists() and cache.path(recent).exists() and cache.path(new).exists()
    assert (result["removed"], result["kept"], result["tmp_removed"]) == (1, 2, 1)
    assert not stale.exists() and fresh.exists()  # a writer may still be filling it
    after = cache_admin.info(tmp_path)["kinds"]["vectors"]
    assert after["entries"] == 2 and after["oldest_use"] > before["oldest_use"]


def test_a_kind_alone_is_pruned_and_an_unknown_kind_is_named(tmp_path: Path) -> None:
    vectors = ArrayCache(tmp_path, "vectors", fingerprint("m"))
    features = ArrayCache(tmp_path, "image-features", fingerprint("b"))
    for cache in (vectors, features):
        for key in entries(cache, 2):
            aged(cache, key, 5 * DAY)
    result = cache_admin.prune(tmp_path, max_size=0, kind="vectors")
    assert result["kinds"].keys() == {"vectors"} and result["removed"] == 2
    assert cache_admin.info(tmp_path)["kinds"]["vectors"]["entries"] == 0
    assert cache_admin.info(tmp_path)["kinds"]["image-features"]["entries"] == 2
    with pytest.raises(CacheError, match=r"--kind 'vector'.*there are: image-features, vectors"):
        cache_admin.prune(tmp_path, max_size=0, kind="vector")
    with pytest.raises(CacheError, match=r"--kind '\.\./vectors'"):
        cache_admin.info(tmp_path, kind="../vectors")


def test_a_dry_run_removes_nothing_and_says_what_would_go(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, "vectors", fingerprint("m"))
    keys = entries(cache, 4)
    for key in keys:
        aged(cache, key, 40 * DAY)
    stale = cache.path(keys[0]).parent / ".x.tmp.npz"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    files = {p: p.stat().st_mtime for p in tmp_path.rglob("*") if p.is_file()}
    result = cache_admin.prune(tmp_path, max_size=0, older_than=DAY, dry_run=True)
    assert {p: p.stat().st_mtime for p in tmp_path.rglob("*") if p.is_file()} == files
    assert (result["dry_run"], result["removed"], result["tmp_removed"], result["kept"]) == (True, 4, 1, 0)
    assert "would remove 4 entries" in cache_admin.describe_prune(result)[-1]


def test_entries_in_use_are_kept_even_above_the_size(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, "vectors", fingerprint("m"))
    old, in_use = entries(cache, 2)
    aged(cache, old, DAY)
    result = cache_admin.prune(tmp_path, max_size=0)  # the default grace: in_use was written a moment ago
    assert not cache.path(old).exists() and cache.path(in_use).exists()
    assert result["over_budget"] and result["kept"] == 1
    assert "still above the size" in cache_admin.describe_prune(result)[-1]
    # used between the scan and its removal: kept
    aged(cache, in_use, DAY)
    [scanned] = cache_admin.scan(tmp_path, "vectors").entries
    assert cache.get(in_use) is not None
    assert cache_admin._remove(scanned, dry_run=False) is False and cache.path(in_use).exists()


def test_a_clean_media_entry_goes_whole_sidecar_first(tmp_path: Path) -> None:
    files = ItemCache(tmp_path, "clean-media", fingerprint("image"), ".media")
    sidecars = ItemCache(tmp_path, "clean-media", fingerprint("image"), ".json")
    key = files.key("ab" * 32)
    files.put(key, lambda tmp: tmp.write_bytes(b"png bytes"))
    sidecars.put(key, lambda tmp: tmp.write_text("{}"))
    aged(files, key, 2 * DAY)
    aged(sidecars, key, 3 * DAY)
    [entry] = cache_admin.scan(tmp_path, "clean-media").entries
    assert [f.suffix for f in entry.files] == [".json", ".media"] and entry.size == 11
    assert entry.last_used == pytest.approx(files.path(key).stat().st_mtime)
    assert cache_admin.prune(tmp_path, older_than=DAY)["removed"] == 1
    assert not files.path(key).exists() and not sidecars.path(key).exists()


def test_an_entry_removed_between_get_and_read_is_a_miss(tmp_path: Path) -> None:
    cache = ItemCache(tmp_path, "validate-media", fingerprint("v"), ".json")
    key = cache.key("cd" * 32)
    cache.put(key, lambda tmp: tmp.write_text('{"reason": ""}'))

    def pruned_then_read(path: Path) -> dict:
        path.unlink()  # what a prune in another process does after get found the entry
        return json.loads(path.read_text())

    assert cache.read(key, pruned_then_read) is None
    cache.put(key, lambda tmp: tmp.write_text('{"reason": ""}'))
    assert cache.read(key, lambda p: json.loads(p.read_text())) == {"reason": ""}


def test_readers_racing_a_prune_get_whole_entries_or_misses(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path, "vectors", fingerprint("m"))
    rng = np.random.default_rng(1)
    arrays = {i: rng.standard_normal((64, 32)).astype(np.float32) for i in range(16)}
    keys = {i: cache.key(f"image:{i:064d}") for i in arrays}
    pid = os.fork()
    if pid == 0:  # writes every entry, prunes the cache to nothing, again and again
        try:
            deadline = time.time() + 20
            while time.time() < deadline:
                for i, key in keys.items():
                    cache.save(key, x=arrays[i])
                cache_admin.prune(tmp_path, max_size=0, grace_s=0)
        finally:
            os._exit(0)
    hits = misses = 0
    try:
        deadline = time.time() + 15
        while time.time() < deadline and (hits < 50 or misses < 50):
            for i, key in keys.items():
                entry = cache.load(key)
                if entry is None:
                    misses += 1
                else:
                    assert entry["x"].tobytes() == arrays[i].tobytes()
                    hits += 1
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert hits >= 50 and misses >= 50, (hits, misses)


@pytest.mark.parametrize(("text", "size"), [("20GB", 20 * 10**9), ("2GiB", 2 * 2**30), ("512M", 512 * 2**20),
                                            ("1.5kB", 1500), ("0", 0), ("4096", 4096), (" 3 mb ", 3 * 10**6)])
def test_sizes_parse(text: str, size: int) -> None:
    assert cache_admin.parse_size(text, "--max-size") == size


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * DAY), ("12h", 43200.0), ("90m", 5400.0),
                                               ("1.5h", 5400.0), ("2w", 14 * DAY), ("45s", 45.0)])
def test_ages_parse(text: str, seconds: float) -> None:
    assert cache_admin.parse_age(text, "--older-than") == seconds


@pytest.mark.parametrize("text", ["20XB", "-1GB", "", "GB", "1e3", "twenty", "20 G B"])
def test_a_bad_size_is_named(text: str) -> None:
    with pytest.raises(CacheError) as e:
        cache_admin.parse_size(text, "--max-size")
    assert isinstance(e.value, MMRError) and f"--max-size {text!r} is not a size" in str(e.value)


@pytest.mark.parametrize("text", ["30", "3 days", "-1d", "d", "1y", "nan"])
def test_a_bad_age_is_named(text: str) -> None:
    with pytest.raises(CacheError, match="is not an age") as e:
        cache_admin.parse_age(text, "--older-than")
    assert f"--older-than {text!r}" in str(e.value)


def test_a_prune_needs_a_limit(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="--max-size.*--older-than"):
        cache_admin.prune(tmp_path)


def mmr(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MMR_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run([sys.executable, "-m", "mmretrieval.cli", *argv], env=env, cwd=home, capture_output=True,
                          text=True, timeout=120)


def test_mmr_cache_info_and_prune(tmp_path: Path) -> None:
    cache = ArrayCache(tmp_path / "var" / "cache", "vectors", fingerprint("m"))
    keys = entries(cache, 3)
    for key, days in zip(keys, (40, 20, 0), strict=True):
        if days:
            aged(cache, key, days * DAY)
    shown = mmr(tmp_path, "cache", "info", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["kinds"]["vectors"]["entries"] == 3 == report["total"]["entries"]
    dry = mmr(tmp_path, "cache", "prune", "--older-than", "30d", "--kind", "vectors", "--dry-run")
    assert dry.returncode == 0 and "would remove 1 entry (" in dry.stdout and cache.path(keys[0]).exists()
    done = json.loads(mmr(tmp_path, "cache", "prune", "--older-than", "10d", "--json").stdout)
    assert done["removed"] == 2 and [cache.path(k).exists() for k in keys] == [False, False, True]
    text = mmr(tmp_path, "cache", "info")
    assert text.returncode == 0 and "vectors" in text.stdout and "1 entry " in text.stdout
    bad = mmr(tmp_path, "cache", "prune", "--max-size", "20XB")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "mmr: error: --max-size '20XB' is not a size: use a number and a unit, e.g. 20GB, 500MB, 2GiB or 0"]
    missing = mmr(tmp_path, "cache", "prune")
    assert missing.returncode == 2 and "nothing to prune by" in missing.stderr


@pytest.mark.parametrize(("action", "flags"), [("info", {"--kind", "--json"}),
                                               ("prune", {"--max-size", "--older-than", "--kind", "--dry-run",
                                                          "--json"})])
def test_mmr_cache_actions_keep_their_flags(action: str, flags: set[str], capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from mmretrieval.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["cache", action, "--help"])
    assert e.value.code == 0
    assert set(re.findall(r"(?<![\w-])--[a-z][\w-]*", capsys.readouterr().out)) - {"--help"} == flags
    assert build_parser().parse_args(["cache", "prune", "--max-size", "20GB", "--dry-run"]).max_size == "20GB"


def test_cache_max_size_in_params_yaml_is_checked_and_prunes_after_a_run(tmp_path: Path) -> None:
    from mmretrieval.core.errors import ConfigError
    from mmretrieval.core.params import load_params
    from mmretrieval.core.settings import get_settings
    from mmretrieval.runner import prune_caches

    assert load_params(None).cache.max_size == ""  # off unless set
    (tmp_path / "params.yaml").write_text("cache: {max_size: 20 parsecs}\n")
    with pytest.raises(ConfigError, match=r"cache\.max_size '20 parsecs' is not a size"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("cache: {max_size: [20]}\n")
    with pytest.raises(ConfigError, match=r"cache\.max_size: expected a size such as 20GB, got \[20\]"):
        load_params(tmp_path / "params.yaml")
    cache = ArrayCache(tmp_path / "var" / "cache", "vectors", fingerprint("m"))
    old, new = entries(cache, 2)
    aged(cache, old, DAY)
    (tmp_path / "params.yaml").write_text(f"cache: {{max_size: {cache.path(new).stat().st_size}}}\n")  # bytes
    result = prune_caches(get_settings(tmp_path))
    assert result["removed"] == 1 and not cache.path(old).exists() and cache.path(new).exists()


def test_a_size_too_large_for_a_number_is_refused_by_name() -> None:
    from mmretrieval.core.cache_admin import parse_size
    from mmretrieval.core.errors import CacheError

    with pytest.raises(CacheError, match="--max-size"):
        parse_size("9" * 400, "--max-size")
