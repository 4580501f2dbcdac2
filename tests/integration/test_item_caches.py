"""Work addressed by content (issue 24): item vectors and backbone features reused across runs, never served for
other bytes, models or settings; byte checks of clean media and embedding shards (issue 25)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.errors import DataChangedError
from mmretrieval.core.layout import read_clean
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_stage
from mmretrieval.stages import embed
from mmretrieval.stages.ingest import ingest
from tests.helpers.digests import record_media_digests
from tests.helpers.files import tiny_dataset, write_png
from tests.helpers.workspace import DEFAULT_TOWER, FAST_PARAMS

pytestmark = pytest.mark.integration


@pytest.fixture
def promoted(workspace: Path) -> Path:
    """The tiny dataset up to a champion, its clean manifest recording each clean file's sha256."""
    (workspace / "params.yaml").write_text(FAST_PARAMS + "embed: {shard_rows: 5, num_workers: 0}\n", encoding="utf-8")
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    for verb in ("validate", "clean", "augment", "train", "evaluate", "promote"):
        run_stage(verb, "tiny")
    record_media_digests(get_settings().layout("tiny"))
    return workspace


def vectors_of(folder: Path) -> dict[str, bytes]:
    frame = pd.concat([pd.read_parquet(f) for f in sorted(folder.glob("part-*.parquet"))])
    return {i: np.asarray(v, dtype=np.float32).tobytes() for i, v in zip(frame["id"], frame["vector"], strict=True)}


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each call of the stage's encoder (reader + mapper) from now on."""
    calls: list[int] = []
    real = embed.encode_rows

    def counted(part: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(part))
        return real(part, *args, **kwargs)

    monkeypatch.setattr(embed, "encode_rows", counted)
    return calls


def test_embedding_again_reuses_every_vector_bit_for_bit_and_recomputes_only_what_changed(
        promoted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = get_settings().layout("tiny")
    first = embed.run("tiny")
    assert first["cache"] == {"reused": 0, "computed": 16} and first["timings"]["computed"] == 16
    assert set(first["checksums"]) == set(first["shards"])
    p = embed.plan("tiny")
    before = vectors_of(p.final)

    calls = counting(monkeypatch)
    shutil.rmtree(p.final)
    again = embed.run("tiny")
    assert calls == [] and again["cache"] == {"reused": 16, "computed": 0}  # no decode, no model
    assert vectors_of(p.final) == before  # bit for bit

    clean = read_clean(layout).frame  # a file replaced (and recorded, as a new clean data version would)
    changed = clean.iloc[7]
    write_png(layout.clean / changed["media"], size=(40, 36), color=(10, 200, 30))
    record_media_digests(layout)
    shutil.rmtree(p.final)
    third = embed.run("tiny")
    assert calls == [1] and third["cache"] == {"reused": 15, "computed": 1}
    after = vectors_of(p.final)
    assert after[changed["id"]] != before[changed["id"]]
    assert {i: v for i, v in after.items() if i != changed["id"]} == {
        i: v for i, v in before.items() if i != changed["id"]}

    # another model version (same weights): nothing of the old one is served
    model = embed.load_model(get_settings(), p)
    other = dataclasses.replace(p, ref=tracking.ModelRef(p.ref.name, "99", p.ref.run_id, p.ref.source))
    timings = embed.Timings()
    embed._Cache(get_settings(), other, model, None)(p.clean.iloc[:5].reset_index(drop=True), model,
                                                     get_settings().params_for("tiny").embed, "test", timings)
    assert (timings.reused, timings.computed) == (0, 5)

    # deleting the cache only costs time: every item computed again, the same vectors
    shutil.rmtree(layout.item_cache)
    shutil.rmtree(p.final)
    fourth = embed.run("tiny")
    assert fourth["cache"] == {"reused": 0, "computed": 16}
    rebuilt = vectors_of(p.final)
    assert all(np.allclose(np.frombuffer(rebuilt[i], np.float32), np.frombuffer(v, np.float32), atol=1e-5)
               for i, v in after.items())


def test_embed_reads_count_as_use_and_a_pruned_cache_recomputes_only_what_went(
        promoted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmr cache prune`` between runs: entries the last run read stay, the others go, and the next run computes
    exactly those again (the same vectors)."""
    import os
    import time

    from mmretrieval.core import cache_admin

    root = get_settings().layout("tiny").item_cache
    embed.run("tiny")
    p = embed.plan("tiny")
    before = vectors_of(p.final)
    files = sorted((root / "vectors").glob("[0-9a-f][0-9a-f]/*.npz"))  # entries (packs/ holds the shard's pack)
    assert len(files) == 16
    long_ago = time.time() - 3 * 86400
    for f in files:  # written three days ago...
        os.utime(f, (long_ago, long_ago))
    shutil.rmtree(p.final)
    assert embed.run("tiny")["cache"] == {"reused": 16, "computed": 0}  # ... and read now
    assert cache_admin.prune(root, older_than=86400, kind="vectors")["removed"] == 0
    for f in files[:6]:
        os.utime(f, (long_ago, long_ago))
    pruned = cache_admin.prune(root, older_than=86400, kind="vectors")
    packs = len(list((root / "vectors" / "packs").glob("*.npz")))  # one per shard, used just now: kept
    assert packs == p.shards
    assert (pruned["removed"], pruned["kept"]) == (6, 10 + packs) and not any(f.exists() for f in files[:6])
    calls = counting(monkeypatch)
    shutil.rmtree(p.final)
    assert embed.run("tiny")["cache"] == {"reused": 16, "computed": 0}  # the shard's pack still holds the six
    shutil.rmtree(root / "vectors" / "packs")  # a lost pack: the entry files, and the six computed again
    shutil.rmtree(p.final)
    assert embed.run("tiny")["cache"] == {"reused": 10, "computed": 6} and sum(calls) == 6
    after = vectors_of(p.final)
    assert after.keys() == before.keys() and all(
        np.allclose(np.frombuffer(after[i], np.float32), np.frombuffer(v, np.float32), atol=1e-5)
        for i, v in before.items())


def test_a_changed_embed_setting_recomputes_every_item(promoted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embed.run("tiny")
    p = embed.plan("tiny")
    shutil.rmtree(p.final)
    with open(promoted / "params.yaml", "a", encoding="utf-8") as f:
        f.write("\noverrides: {tiny: {embed: {precision: bf16}}}\n")
    assert embed.run("tiny")["cache"] == {"reused": 0, "computed": 16}


def test_a_tampered_clean_file_stops_embed_and_a_tampered_shard_stops_publish(promoted: Path) -> None:
    layout = get_settings().layout("tiny")
    victim = layout.clean / read_clean(layout).frame.iloc[3]["media"]
    good = victim.read_bytes()
    victim.write_bytes(good + b"\0")  # same picture, other bytes than the data version recorded
    with pytest.raises(DataChangedError, match=f"{victim.name} changed since the clean data version") as e:
        embed.run("tiny")
    assert "\n" not in str(e.value)
    victim.unlink()
    with pytest.raises(DataChangedError, match=f"{victim.name} is gone"):
        embed.run("tiny")
    victim.write_bytes(good)
    summary = embed.run("tiny")

    shard = Path(summary["path"]) / summary["shards"][1]
    frame = pd.read_parquet(shard)
    frame["vector"] = [-v if j == 0 else v for j, v in enumerate(frame["vector"])]  # unit vectors: only the
    # checksum tells
    frame.to_parquet(shard, index=False)
    with pytest.raises(DataChangedError, match=f"embedding shard .*{shard.name} changed"):
        run_stage("publish", "tiny")


def test_a_tampered_clean_file_stops_training(prepared: Path) -> None:
    layout = get_settings().layout("tiny")
    record_media_digests(layout)
    clean = read_clean(layout).frame
    victim = layout.clean / clean[clean["split"] == "train"].iloc[0]["media"]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\1")
    with pytest.raises(DataChangedError, match=victim.name):
        run_stage("train", "tiny")


def test_retraining_runs_only_new_images_through_the_frozen_backbone(prepared: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from mmretrieval.models import efficientnet

    seen: list[int] = []
    forward = efficientnet.CNNImageTower.feature_map
    monkeypatch.setattr(efficientnet.CNNImageTower, "feature_map",
                        lambda self, pixels: seen.append(len(pixels)) or forward(self, pixels))
    with open(prepared / "params.yaml", "a", encoding="utf-8") as f:
        f.write(f"\noverrides: {{tiny: {json.dumps({'model': DEFAULT_TOWER, 'train': {'epochs': 1}})}}}\n")
    record_media_digests(get_settings().layout("tiny"))
    first = run_stage("train", "tiny")
    assert first["features"] == {"image": {"reused": 0, "computed": 8}}
    assert sum(seen) == 8 * 2 + 4  # 8 training images, plain and mirrored; 4 validation images
    seen.clear()
    second = run_stage("train", "tiny")
    assert second["features"] == {"image": {"reused": 8, "computed": 0}}
    assert sum(seen) == 4  # only validation ran through the backbone
    def quality(m: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in m.items() if not k.endswith("_per_s")}

    assert quality(second["metrics"]) == quality(first["metrics"])  # the same features bit for bit: the same
    # seeded training
