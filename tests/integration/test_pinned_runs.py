"""Runs act on the inputs they pinned: interleaved trainings each get their own evaluation and gate decision, and a
champion promoted in the middle of serving is never mixed into that serve run (real MLflow, Milvus Lite, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.contracts import Pinned
from mmretrieval.core.errors import PinnedInputChanged
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_stage
from mmretrieval.stages import embed, publish

pytestmark = pytest.mark.integration


def test_interleaved_trainings_of_one_dataset_each_get_their_own_metrics_and_gate_decision(prepared: Path) -> None:
    first = run_stage("train", "tiny")["model_version"]
    second = run_stage("train", "tiny")["model_version"]  # the challenger alias now points at the second
    assert (first, second) == ("1", "2")
    evaluated = {v: run_stage("evaluate", "tiny", version=v) for v in (first, second)}
    assert {v: e["challenger"] for v, e in evaluated.items()} == {"1": "1", "2": "2"}
    decisions = {v: run_stage("promote", "tiny", version=v) for v in (first, second)}
    assert decisions["1"]["promoted"] is True and decisions["1"]["version"] == "1"
    # v2 was evaluated against no champion; v1 has become champion since: v2 is not promoted on stale numbers
    assert decisions["2"]["promoted"] is False and "champion changed" in decisions["2"]["reasons"][0]
    log = [json.loads(line) for line in (prepared / "var/promotions/tiny.jsonl").read_text().splitlines()]
    assert [(e["challenger"], e["action"]) for e in log] == [("1", "promote"), ("2", "reject")]
    settings = get_settings(prepared)
    for v in (first, second):  # each version's own MLflow run got its own test metrics
        run = tracking.client(settings).get_run(tracking.get_version(settings, "mmr-tiny", v).run_id)
        assert run.data.metrics["test_t2i_recall_at_10"] == pytest.approx(evaluated[v]["metrics"]["t2i_recall@10"],
                                                                          abs=1e-4)


def test_a_champion_promoted_during_serving_is_not_mixed_into_the_run(prepared: Path) -> None:
    for verb in ("train", "evaluate", "promote"):
        run_stage(verb, "tiny")
    started = embed.start("tiny")  # the first serve task: resolves the champion (v1) and pins it
    pinned = started.pinned
    assert pinned.model_version == "1"
    for verb in ("train", "evaluate", "promote"):  # meanwhile, v2 becomes champion
        run_stage(verb, "tiny")
    assert tracking.require_alias(get_settings(prepared), "tiny", tracking.CHAMPION).version == "2"
    for k in started.shards:
        embed.run_shard("tiny", k, pinned=pinned)
    summary = embed.finalize("tiny", pinned=pinned)
    result = publish.run("tiny", pinned=pinned)
    assert summary["model_version"] == "1" and result["model_version"] == "1"
    shards = pd.concat(pd.read_parquet(p) for p in (prepared / "data/embeddings/tiny/v1").glob("part-*.parquet"))
    assert set(shards["model_version"]) == {"1"}
    assert result["collection"].startswith("mmr_tiny__m1__")
    # clean data rewritten under a run fails it loudly instead of mixing data versions
    with pytest.raises(PinnedInputChanged, match="changed during this run"):
        embed.run_shard("tiny", 0, pinned=Pinned("1", "0" * 32))
