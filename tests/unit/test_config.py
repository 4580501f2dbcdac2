import re
from pathlib import Path

import pytest

from mmretrieval.core.config import Params, get_settings, load_params
from mmretrieval.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_file_loads_and_only_uses_known_keys() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.gate.metric == "t2i_recall@10"
    assert "demo" in params.datasets


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("train: {epocs: 3}\n")
    with pytest.raises(ConfigError, match="epocs"):
        load_params(p)


def test_split_ratios_must_sum_to_one(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("split: {train: 0.9, val: 0.2, test: 0.1}\n")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_params(p)


def test_dataset_overrides_change_only_that_dataset() -> None:
    params = Params(overrides={"demo": {"train": {"epochs": 3}}})
    assert params.for_dataset("demo").train.epochs == 3
    assert params.for_dataset("other").train.epochs == Params().train.epochs


def test_environment_switches_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMR_MILVUS_URI", "http://milvus:19530")
    monkeypatch.setenv("MMR_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.delenv("MMR_MLFLOW_ARTIFACTS", raising=False)
    s = get_settings(tmp_path)
    assert s.milvus_uri == "http://milvus:19530"
    assert s.mlflow_uri == "http://mlflow:5000"
    assert s.mlflow_artifacts == ""  # the tracking server picks its artifact store


def test_bad_dataset_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Bad-Name"):
        get_settings(tmp_path).layout("Bad-Name")


def test_embedding_shards_need_at_least_one_row(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("embed: {shard_rows: 0}\n")
    with pytest.raises(ConfigError, match="shard_rows"):
        load_params(p)


@pytest.mark.parametrize("bad", ["bootstrap: 0", "depth: 5000", "depth: 1.5", "depth: true", "folds: 1",
                                 "confidence: 1.0", "concept_grid: 0"])
def test_rerank_params_out_of_range_are_refused_when_params_load(tmp_path: Path, bad: str) -> None:
    (tmp_path / "params.yaml").write_text(f"rerank:\n  {bad}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"rerank.{bad.split(':')[0]}"):
        get_settings(tmp_path).params_for("demo")


@pytest.mark.parametrize(("bad", "key"), [
    ("modality: video", "rerank.modality"), ("modality: audio", "rerank.modality audio"),  # concepts: image-only
    ("queries: images", "rerank.queries"), ("metric: t2a_hit_rate@1", "rerank.metric")])
def test_rerank_modality_queries_and_metric_must_fit_together(tmp_path: Path, bad: str, key: str) -> None:
    (tmp_path / "params.yaml").write_text(f"rerank:\n  {bad}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=key):
        get_settings(tmp_path).params_for("demo")
    audio = "rerank: {modality: audio, concepts: false, layers: 1, metric: a2t_hit_rate@1, queries: item}\n"
    (tmp_path / "params.yaml").write_text(audio, encoding="utf-8")
    assert get_settings(tmp_path).params_for("demo").rerank.modality == "audio"


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("overrides: [1, 2]", "overrides"), ("overrides: {demo: [1]}", "overrides.demo"),
    ("validate: {labels: 5}", "validate.labels"), ("datasets: null", "datasets"),
    ("rerank: {lr: true}", "rerank.lr"), ("rerank: {min_gain: .nan}", "rerank.min_gain"),
    ("rerank: {min_gain: 5}", "rerank.min_gain"), ("rerank: {mixing_lr: .inf}", "rerank.mixing_lr"),
    ("rerank: {seed: -1}", "rerank.seed"), ("rerank: {seed: 1.5}", "rerank.seed"),
    ("rerank: {negatives: 1000000000}", "rerank.negatives"), ("rerank: {enabled: 0}", "rerank.enabled"),
    ("rerank: {heads: 7, layers: 1, concepts: false}", "rerank.heads"), ("distill: {epochs: 0}", "distill.epochs"),
    ("distill: {lr: -1}", "distill.lr"), ("index: {centre: audio}", "index.centre"),
    ("train: {epochs: 2.5}", "train.epochs"),
    ("overrides: {other: {rerank: {depth: 0}}}", "overrides.other: rerank.depth"),  # checked when params load
])
def test_values_of_the_wrong_kind_are_refused_when_params_load_naming_the_key(tmp_path: Path, yaml_text: str,
                                                                               key: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml_text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"params.yaml: {re.escape(key)}"):
        get_settings(tmp_path).params_for("demo")
