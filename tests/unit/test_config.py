import re
from pathlib import Path

import pytest

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.params import Params, load_params
from mmretrieval.core.settings import get_settings

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


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("augment: {hflip: 1}", "augment.hflip"), ("train: {lr: .inf}", "train.lr"),  # booleans, finite numbers
    ("model: {text_model: 5}", "model.text_model"), ("datasets: [demo, Bad-Name]", "datasets.1"),
    ("trian: {epochs: 3}", "trian: unknown key"),
    ("model: {image_head: none}", "model.image_head"), ("model: {text_head: conv}", "model.text_head"),  # choices
    ("model: {audio_norm: peak}", "model.audio_norm"), ("model: {video_pool: max}", "model.video_pool"),
    ("model: {audio_tower: rnn}", "model.audio_tower"), ("train: {loss: hinge}", "train.loss"),
    ("embed: {precision: fp16}", "embed.precision"),
    ("train: {epochs: 0}", "train.epochs"), ("train: {batch_size: 1}", "train.batch_size"),  # bounds
    ("train: {seed: -1}", "train.seed"), ("distill: {seed: 4294967296}", "distill.seed"),
    ("model: {video_frames: 0}", "model.video_frames"), ("model: {image_dropout: 1.0}", "model.image_dropout"),
    ("split: {train: -0.1, val: 0.6, test: 0.5}", "split.train"), ("validate: {clipped_share: 2}",
                                                                   "validate.clipped_share"),
    ("clean: {near_duplicate_distance: -2}", "clean.near_duplicate_distance"),
    ("augment: {crop_scale_min: 0}", "augment.crop_scale_min"), ("embed: {num_workers: -1}", "embed.num_workers"),
    ("index: {keep_collections: 0}", "index.keep_collections"), ("index: {min_recall: 1.5}", "index.min_recall"),
])
def test_each_rule_refuses_naming_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    (tmp_path / "params.yaml").write_text(yaml_text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"params.yaml: {re.escape(key)}"):
        load_params(tmp_path / "params.yaml")


def test_the_values_at_the_edges_of_the_rules_load(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "train: {epochs: 3.0, batch_size: 2, seed: 4294967295}\nclean: {near_duplicate_distance: -1}\n"
        "rerank: {enabled: false, folds: 0}\nindex: {centre: []}\nmodel: {audio_tower: '', video_pool: mean}\n"
        "split: {train: 1, val: 0, test: 0}\n", encoding="utf-8")
    params = load_params(tmp_path / "params.yaml")
    assert params.train.epochs == 3 and isinstance(params.train.epochs, int)
    assert (params.rerank.enabled, params.index.centre, params.model.audio_tower) == (False, (), "")


def test_every_problem_is_reported_with_its_value(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train: {epochs: 0, loss: hinge}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "params.yaml")
    assert "train.epochs" in str(e.value) and "got 0" in str(e.value)
    assert "train.loss" in str(e.value) and "got 'hinge'" in str(e.value)


def test_an_override_built_in_code_is_checked_when_applied() -> None:
    params = Params(overrides={"demo": {"train": {"epochs": 0}}})
    assert params.for_dataset("other") is params
    with pytest.raises(ConfigError, match=r"^train\.epochs: .*got 0"):
        params.for_dataset("demo")


def test_logged_params_keep_the_yaml_kinds_of_the_defaults(tmp_path: Path) -> None:
    """MLflow logs ``str(value)``: a whole number in a float key stays a float, modalities plain strings."""
    (tmp_path / "params.yaml").write_text("clean: {audio_trim_db: 40}\nindex: {centre: [audio, video]}\n",
                                          encoding="utf-8")
    flat = load_params(tmp_path / "params.yaml").as_flat_dict()
    assert str(flat["clean.audio_trim_db"]) == "40.0" and str(flat["index.centre"]) == "('audio', 'video')"
    assert "train.epochs" in flat and not any(key.startswith(("datasets", "overrides")) for key in flat)


def test_environment_variables_and_their_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MMR_HOME", "MMR_PARAMS", "MMR_MILVUS_URI", "MMR_MILVUS_TOKEN", "MMR_MLFLOW_TRACKING_URI",
                "MMR_MLFLOW_ARTIFACTS", "MMR_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")  # MLflow's own variable is the fallback
    monkeypatch.setenv("MMR_MILVUS_URI", "")  # empty counts as unset
    monkeypatch.setenv("MMR_HOME", str(tmp_path / "elsewhere"))
    (tmp_path / "p.yaml").write_text("train: {epochs: 3}\n", encoding="utf-8")
    monkeypatch.setenv("MMR_PARAMS", str(tmp_path / "p.yaml"))
    s = get_settings(tmp_path)  # the argument beats MMR_HOME
    assert (s.home, s.milvus_uri, s.mlflow_uri) == (tmp_path.resolve(), str(tmp_path / "var" / "milvus.db"),
                                                   "http://mlflow:5000")
    assert (s.mlflow_artifacts, s.device, s.params.train.epochs) == ("", "auto", 3)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert get_settings(tmp_path).mlflow_artifacts == str(tmp_path / "var" / "mlartifacts")
    monkeypatch.setenv("MMR_DEVICE", "gpu")
    with pytest.raises(ConfigError, match="MMR_DEVICE='gpu'"):
        get_settings(tmp_path)


def test_mmr_params_schema_describes_params_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import jsonschema
    import yaml

    from mmretrieval.cli import main

    assert main(["params", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.validate(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), schema)
    for bad in ({"train": {"epocs": 3}}, {"rerank": {"modality": "video"}}, {"embed": {"shard_rows": 0}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
