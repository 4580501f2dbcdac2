"""The evaluator's contract (data in at construction, a model in at the call, ``dict[str, float]`` out, a named primary
metric) and the modality table it decodes and encodes with, on a stand-in model whose vectors are known."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmretrieval.core.errors import ConfigError, TrainingError
from mmretrieval.evaluation.evaluator import RetrievalEvaluator
from mmretrieval.models.modalities import MEDIA_MODALITIES, media_modality

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourModel:
    """Images and captions as one-hot vectors of their colour: captions find exactly the images of their colour."""

    config = SimpleNamespace()  # the image loader needs nothing of the model's config
    modalities = ("text", "image")

    def __init__(self, swap: bool = False) -> None:
        self.names = list(COLOURS)[::-1] if swap else list(COLOURS)  # swap: every caption finds the wrong colour

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([np.eye(3, dtype=np.float32)[[n in t for n in self.names].index(True)] for t in texts])

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        keys = [list(COLOURS.values()).index(im.getpixel((0, 0))) for im in images]
        return np.eye(3, dtype=np.float32)[keys]


def colour_split(tmp_path: Path, broken: bool = False) -> pd.DataFrame:
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (8, 8), rgb).save(tmp_path / f"{name}.png")
        rows.append({"id": name, "modality": "image", "media": f"{name}.png", "text": f"a {name} square", "label": ""})
    if broken:
        (tmp_path / "broken.png").write_bytes(b"not a png")
        rows.append({"id": "broken", "modality": "image", "media": "broken.png", "text": "a grey square", "label": ""})
    rows.append({"id": "words", "modality": "text", "media": "", "text": "only text", "label": ""})
    return pd.DataFrame(rows)


def test_an_evaluator_is_built_from_data_and_called_with_a_model(tmp_path: Path) -> None:
    evaluator = RetrievalEvaluator(colour_split(tmp_path, broken=True), tmp_path, primary_metric="t2i_recall@1",
                                   ks=(1, 2))
    assert evaluator.modalities == ["image"]  # text rows are queries' captions, not items
    metrics = evaluator(ColourModel())
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["t2i_recall@1"] == metrics["i2t_recall@1"] == 1.0
    assert metrics["t2i_recall@1_chance"] == pytest.approx(1 / 3)
    assert metrics["image_items"] == metrics["items"] == 3.0
    assert metrics["image_skipped_undecodable"] == 1.0  # the file that does not decode is counted, not scored
    assert evaluator.primary_metric == "t2i_recall@1"
    assert evaluator(ColourModel(swap=True))["t2i_recall@1"] < 1.0  # a worse model scores lower on the same data


def test_the_primary_metric_resolves_to_the_twin_of_the_data_at_hand(tmp_path: Path) -> None:
    evaluator = RetrievalEvaluator(colour_split(tmp_path), tmp_path, primary_metric="t2i_recall@10")
    assert evaluator.resolve_primary({"t2a_recall@10": 0.5, "a2t_recall@10": 0.4}) == "t2a_recall@10"
    assert evaluator.primary_metric == "t2a_recall@10"
    assert evaluator.resolve_primary({"t2v_recall@10": 0.5}) == "t2v_recall@10"
    assert evaluator.resolve_primary({"loss": 1.0}) == "t2i_recall@10"  # absent: the configured name


def test_nothing_to_evaluate_is_an_error_that_says_why(tmp_path: Path) -> None:
    frame = colour_split(tmp_path)
    with pytest.raises(TrainingError, match="nothing to evaluate"):
        RetrievalEvaluator(frame, tmp_path, primary_metric="t2i_recall@1")(SimpleNamespace(modalities=("text",)))
    with pytest.raises(TrainingError, match="only 1 image item"):
        RetrievalEvaluator(frame.iloc[[0, 3]], tmp_path, primary_metric="t2i_recall@1")(ColourModel())


def test_one_table_names_each_media_modality_once() -> None:
    assert list(MEDIA_MODALITIES) == ["image", "audio", "video"]
    assert [media_modality(m).letter for m in MEDIA_MODALITIES] == ["i", "a", "v"]
    with pytest.raises(ConfigError, match="'text' is not a media modality"):
        media_modality("text")
