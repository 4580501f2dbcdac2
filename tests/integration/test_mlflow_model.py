"""The registered model is an MLflow model: ``mlflow.pyfunc.load_model("models:/mmr-<ds>@champion")`` serves the
platform's vectors; the run has its dataset input, the version a description (real MLflow, SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.errors import QueryError
from mmretrieval.core.settings import get_settings
from mmretrieval.media.image import open_image
from mmretrieval.runner import run_stage
from mmretrieval.serving import loading

pytestmark = pytest.mark.integration


@pytest.fixture
def champion(prepared: Path) -> Path:
    run_stage("train", "tiny")
    run_stage("evaluate", "tiny", version="1")
    assert run_stage("promote", "tiny", version="1")["promoted"] is True
    return prepared


def test_the_champion_loads_with_mlflow_pyfunc_and_gives_the_platforms_vectors(champion: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.models import Model

    settings = get_settings(champion)
    # as a serving team points MLflow at our store (explicitly: another test may have left a process-wide URI)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", settings.mlflow_uri)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", settings.mlflow_uri)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", settings.mlflow_uri)
    ref = tracking.require_alias(settings, "tiny", tracking.CHAMPION)
    platform = loading.load_model(settings, ref)
    png = (champion / "data/raw/tiny/images/blue2.png").read_bytes()
    frame = pd.DataFrame([{"text": "a blue square"}, {"image": png}, {"text": "something red"}],
                         columns=["text", "image"])

    served = mlflow.pyfunc.load_model("models:/mmr-tiny@champion")
    vectors = np.asarray(served.predict(frame))

    expected = np.concatenate([platform.encode_texts(["a blue square"]), platform.encode_images([open_image(png)]),
                               platform.encode_texts(["something red"])])
    assert vectors.shape == (3, platform.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[2])  # different captions, different vectors

    meta = Model.load(mlflow.artifacts.download_artifacts("models:/mmr-tiny@champion/MLmodel"))
    assert "python_function" in meta.flavors
    flavor = meta.flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # model from code, not a pickled object
    assert [c.name for c in meta.signature.inputs.inputs] == ["text", "image"]  # the tiny model has no audio tower
    assert meta.signature.outputs.inputs[0].shape == (-1, platform.dim)
    assert meta.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts("models:/mmr-tiny@champion"))
    code = (local / Path(flavor["model_code_path"]).name).read_text(encoding="utf-8")
    assert code.count("mlflow.models.set_model(RetrievalPyfunc())") == 1
    assert not list(local.rglob("*.pkl")) and (local / "artifacts/retrieval_model/weights.safetensors").is_file()
    with pytest.raises(QueryError, match="row 0 has 2 non-empty columns"):
        served.predict(pd.DataFrame([{"text": "x", "image": png}]))
    with pytest.raises(QueryError, match="no input column"):  # MLflow drops unknown columns before our predict
        served.predict(pd.DataFrame({"foo": ["x"]}))
    with pytest.raises(QueryError, match="takes the file's bytes"):
        served.predict(pd.DataFrame({"image": ["not bytes"]}))


def test_the_run_logs_its_dataset_and_the_version_describes_data_metrics_and_gate(champion: Path) -> None:
    settings = get_settings(champion)
    c = tracking.client(settings)
    ref = tracking.require_alias(settings, "tiny", tracking.CHAMPION)
    data_version = json.loads((champion / "data/augmented/tiny/policy.json").read_text())["data_version"]

    inputs = c.get_run(ref.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    logged = inputs[0]
    manifest = champion / "data/augmented/tiny/manifest.parquet"
    import hashlib

    assert logged.dataset.name == "tiny"
    assert logged.dataset.digest == hashlib.md5(manifest.read_bytes(), usedforsecurity=False).hexdigest()
    assert {t.key: t.value for t in logged.tags}["data_version"] == data_version

    docs = [f.path for f in c.list_artifacts(ref.run_id, "data_docs")]
    assert docs == ["data_docs/data_docs.html"]  # the validation's page, linked from the run
    page = Path(c.download_artifacts(ref.run_id, "data_docs/data_docs.html", str(champion / "dl"))).read_text()
    assert f"Data version (DVC): <code>{data_version}</code>" in page

    description = c.get_model_version(ref.name, ref.version).description
    assert f"Data version (DVC): {data_version}" in description
    assert "Test metrics: " in description and "t2i_recall@1=" in description
    assert "Gate decision: promote" in description and "floor" in description
