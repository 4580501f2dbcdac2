"""Corpus centring: fitted per modality, applied to stored items and queries alike, stored on the collection."""

from __future__ import annotations

import numpy as np
import pytest

from mmretrieval.core.errors import ConfigError, IndexStoreError
from mmretrieval.evaluation.centring import Centring, fit


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_centring_removes_a_shared_offset_that_makes_one_caption_a_hub() -> None:
    rng = np.random.default_rng(0)
    words = unit(rng.normal(size=(5, 16)))  # five captions
    labels = np.repeat(np.arange(5), 20)
    offset = 3 * words[0]  # an unseen voice: every clip pushed towards caption 0
    clips = unit(words[labels] + offset + 0.3 * rng.normal(size=(100, 16)))
    before = (np.argmax(clips @ words.T, axis=1) == labels).mean()
    centre = fit(clips, ["audio"] * 100, ["audio"], min_items=20)
    after = (np.argmax(centre.apply(clips, "audio") @ words.T, axis=1) == labels).mean()
    assert before <= 0.2 and after > 0.8  # all on caption 0 before; mostly right after


def test_centred_vectors_are_unit_vectors_and_other_modalities_pass_through() -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(30, 8)) + 2)
    kinds = ["audio"] * 25 + ["text"] * 5
    centre = fit(vectors, kinds, ["audio", "text"], min_items=10)
    assert centre.modalities == ["audio"]  # five texts are too few to centre
    out = centre.apply_rows(vectors, kinds)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.array_equal(out[25:], vectors[25:]) and not np.allclose(out[:25], vectors[:25])
    one = centre.apply(vectors[3], "audio")  # a single query vector is centred like a stored row
    assert np.allclose(one, out[3], atol=1e-6)
    assert np.allclose(out[:25].mean(axis=0) @ out[:25].mean(axis=0), 0, atol=0.05)


def test_the_means_survive_the_collection_property_round_trip() -> None:
    centre = fit(unit(np.random.default_rng(2).normal(size=(40, 6))), ["image"] * 40, ["image"], 20)
    back = Centring.from_property(centre.to_property())
    assert back.modalities == ["image"] and np.array_equal(back.means["image"], centre.means["image"])
    assert Centring.from_property("").means == {} and Centring.from_property(None).means == {}


def test_an_unreadable_centre_property_names_the_collection() -> None:
    with pytest.raises(IndexStoreError, match="mmr_x__m1"):
        Centring.from_property("{not json", "collection mmr_x__m1")


def test_a_mean_of_another_dimension_is_refused() -> None:
    centre = Centring({"audio": np.zeros(4, dtype=np.float32)})
    with pytest.raises(ValueError, match="8-d audio"):
        centre.apply(np.ones((2, 8), dtype=np.float32), "audio")


def test_params_refuse_an_unknown_modality_to_centre(tmp_path) -> None:
    from mmretrieval.core.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("index: {centre: [audio, smell]}\n")
    with pytest.raises(ConfigError, match="smell"):
        load_params(path)
