"""The hand-off's local default and its tables (mmretrieval/handoff.py, backends/store.py, the lock interface): without
MMR_DATA_URL nothing is pulled, pushed or marked; the settings refuse a URL without a scheme; every stage verb has
its inputs and outputs; the store's commit protocol on a local fsspec folder (the S3 server tests are in
tests/integration/test_store.py); lock keys and re-entrancy."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmretrieval.backends.coordination import lock_key
from mmretrieval.backends.store import COMMIT, Store
from mmretrieval.core.errors import ConfigError, StoreError
from mmretrieval.core.locks import dataset_lock
from mmretrieval.core.settings import get_settings
from mmretrieval.handoff import READS, WRITES, store_of, synced, unit
from mmretrieval.runner import STAGES


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("MMR_DATA_URL", "MMR_LOCK_URL", "MMR_HOME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "params.yaml").write_text("datasets: [demo]\n", encoding="utf-8")
    return tmp_path


def test_without_a_data_url_a_stage_run_touches_no_store(home: Path) -> None:
    settings = get_settings(home)
    assert settings.data_url == "" and settings.lock_url == "" and store_of(settings) is None
    with synced("clean", "demo", settings, {}):
        (home / "data").mkdir()
    assert sorted(p.name for p in home.iterdir()) == ["data", "params.yaml"]  # no var/store, no lock files


def test_the_settings_refuse_a_store_or_lock_url_without_a_scheme(home: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.setenv("MMR_DATA_URL", "my-bucket/prefix")
    with pytest.raises(ConfigError, match="my-bucket/prefix"):
        get_settings(home)
    monkeypatch.setenv("MMR_DATA_URL", "s3://my-bucket/prefix/")
    monkeypatch.setenv("MMR_LOCK_URL", "redis://127.0.0.1:6379/0")
    settings = get_settings(home)
    assert settings.data_url == "s3://my-bucket/prefix"
    with pytest.raises(ConfigError, match="no lock coordinator for 'redis'"), dataset_lock(settings, "demo", "gate"):
        pass


def test_every_stage_verb_names_its_inputs_and_outputs(home: Path) -> None:
    assert set(READS) == set(WRITES) == set(STAGES)
    settings = get_settings(home)
    assert unit(settings, "demo", "clean") == ("clean/demo", settings.layout("demo").clean)
    assert unit(settings, "demo", "embeddings", "3") == ("embeddings/demo/v3", settings.layout("demo").embeddings("3"))
    assert unit(settings, "demo", "promotions")[1] == settings.layout("demo").promotions_log
    for verb in STAGES:  # what a verb reads was written by a verb before it (raw by ingest, shards by embed tasks)
        before = {name for v in STAGES[:STAGES.index(verb)] for name in WRITES[v]} | {"raw", "shards"}
        assert set(READS[verb]) - {"embeddings"} <= before | ({"promotions"} if verb == "rerank" else set()), verb


def test_the_commit_protocol_on_a_local_folder_store(tmp_path: Path) -> None:
    store = Store(f"file://{tmp_path / 'bucket'}", markers=tmp_path / "markers")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rows.parquet").write_bytes(b"rows")
    record = store.push(tmp_path / "out", "validated/demo")
    assert (tmp_path / "bucket" / "validated" / "demo" / COMMIT).is_file()
    reader = Store(f"file://{tmp_path / 'bucket'}")
    assert reader.pull("validated/demo", tmp_path / "in")["commit"] == record["commit"]
    assert (tmp_path / "in" / "rows.parquet").read_bytes() == b"rows"
    obj = tmp_path / "bucket" / "validated" / "demo" / "objects" / record["commit"] / "rows.parquet"
    obj.write_bytes(b"ROWS")
    with pytest.raises(StoreError, match="rows.parquet differs"):
        reader.pull("validated/demo", tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with pytest.raises(StoreError, match="bad store unit"):
        store.push(tmp_path / "out", "../elsewhere")


def test_lock_keys_are_stable_signed_64_bit_integers_per_name() -> None:
    keys = {lock_key(f"{ds}.{name}") for ds in ("demo", "tiny") for name in ("train", "gate", "rerank")}
    assert len(keys) == 6 and all(-2**63 <= k < 2**63 for k in keys)
    assert lock_key("demo.train") == lock_key("demo.train")


def test_a_thread_may_take_a_file_lock_it_holds_again(home: Path) -> None:
    settings = get_settings(home)
    with dataset_lock(settings, "demo", "train"), dataset_lock(settings, "demo", "train"):
        assert settings.layout("demo").lock("train").exists()
    with dataset_lock(settings, "demo", "train"):  # released by the outer block: free again
        pass
