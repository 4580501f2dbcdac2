"""The evaluator: a model and a data split in, ``dict[str, float]`` of retrieval metrics out.

Used by training's validation, the evaluate stage, the re-rank stage and ``mmr evaluate --manifest``. Metric names
are ``t2i_*``/``i2t_*`` (image), ``t2a_*``/``a2t_*`` (audio), ``t2v_*``/``v2t_*`` (video), each with its chance level
(:mod:`mmretrieval.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmretrieval.core.errors import MediaError, TrainingError
from mmretrieval.core.params import IndexParams
from mmretrieval.core.schema import Modality, captions_of
from mmretrieval.evaluation import centring
from mmretrieval.evaluation.metrics import CHANCE_SUFFIX, EvalSet, both_directions, build_eval_set
from mmretrieval.media.image import open_image

if TYPE_CHECKING:
    from PIL import Image

    from mmretrieval.models.dual_encoder import RetrievalModel


KS = (1, 5, 10)


@dataclass
class Scored:
    """Metrics plus what the report's figures need."""

    metrics: dict[str, float]
    eval_set: EvalSet
    sim: np.ndarray  # (captions, items) cosine similarities
    images: list[Image.Image]


MEDIA_LETTER = {Modality.IMAGE.value: "i", Modality.AUDIO.value: "a", Modality.VIDEO.value: "v"}


def gather(frame: pd.DataFrame, root: Path, media_column: str, modality: str, load: Callable[[Path], Any]
           ) -> tuple[list[str], list[Any], list[list[str]], list[str], int]:
    """The ``modality`` rows of ``frame`` that have captions, their media decoded by ``load`` (path -> object):
    ids, media, captions, labels, and the number of rows skipped because their file did not decode.
    Raises :class:`TrainingError` when fewer than two items are left."""
    ids, media, captions, labels = [], [], [], []
    skipped = 0
    for _, row in frame[frame["modality"] == modality].iterrows():
        caps = captions_of(row)
        if not caps:
            continue
        try:
            media.append(load(root / row[media_column]))
        except (MediaError, OSError):
            skipped += 1
            continue
        ids.append(row["id"])
        captions.append(caps)
        labels.append(str(row["label"]))
    if len(ids) < 2:
        raise TrainingError(f"only {len(ids)} {modality} item(s) with captions to evaluate on; need at least 2")
    return ids, media, captions, labels, skipped


def score_detailed(model: RetrievalModel, frame: pd.DataFrame, root: Path, media_column: str,
                   ks: Sequence[int] = KS, modality: str = Modality.IMAGE.value,
                   index: IndexParams | None = None) -> Scored:
    """Both-direction metrics between captions and the ``modality`` rows of ``frame`` (media relative to ``root``).

    Keys: ``t2i_*``/``i2t_*`` for images, ``t2a_*``/``a2t_*`` for audio, ``t2v_*``/``v2t_*`` for video. With
    ``index`` (the serving settings), the modalities in ``index.centre`` are centred on the evaluated items' means
    and the uncentred metrics are added as ``raw_*``.
    """
    load = open_image if modality == Modality.IMAGE.value else model.load_wave
    if modality == Modality.VIDEO.value:
        load = model.load_clip
    ids, media, captions, labels, skipped = gather(frame, root, media_column, modality, load)
    eval_set = build_eval_set(ids, captions, labels)
    text_vecs = model.encode_texts(eval_set.captions)
    if modality == Modality.VIDEO.value:
        item_vecs = model.encode_video_list(media)
    else:
        item_vecs = model.encode_images(media) if modality == Modality.IMAGE.value else model.encode_wave_list(media)
    metrics, text_vecs, item_vecs = metrics_from_vectors(text_vecs, item_vecs, eval_set, modality, ks, index)
    metrics[f"{modality}_items"] = float(len(ids))
    metrics[f"{modality}_skipped_undecodable"] = float(skipped)
    return Scored(metrics, eval_set, text_vecs @ item_vecs.T, media if modality == Modality.IMAGE.value else [])


def metrics_from_vectors(text_vecs: np.ndarray, item_vecs: np.ndarray, eval_set: EvalSet, modality: str,
                         ks: Sequence[int] = KS, index: IndexParams | None = None
                         ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Both-direction metrics (each with its chance level) of (captions, D) text and (items, D) ``modality`` unit
    vectors, named ``t2i_*``/``i2t_*`` or ``t2a_*``/``a2t_*``; centred as :func:`score_detailed` says. Returns the
    metrics and the vectors they were computed on."""
    letter = MEDIA_LETTER[modality]

    def named(t: np.ndarray, i: np.ndarray, prefix: str = "") -> dict[str, float]:
        return {prefix + k.replace("t2i_", f"t2{letter}_").replace("i2t_", f"{letter}2t_"): v
                for k, v in both_directions(t, i, eval_set, ks).items()}

    metrics: dict[str, float] = {}
    centred_text, centred_items = centred(text_vecs, item_vecs, modality, index)
    if centred_items is not item_vecs or centred_text is not text_vecs:  # new arrays exactly when it centred
        metrics |= {k: v for k, v in named(text_vecs, item_vecs, "raw_").items() if not k.endswith(CHANCE_SUFFIX)}
    metrics |= named(centred_text, centred_items)
    return metrics, centred_text, centred_items


def centred(text_vecs: np.ndarray, item_vecs: np.ndarray, modality: str, index: IndexParams | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(captions, D) text and (items, D) ``modality`` unit vectors as evaluation scores them: the modalities in
    ``index.centre`` centred on the means of these vectors (:mod:`mmretrieval.evaluation.centring`), as publishing centres a
    collection on its own; the same arrays when nothing is centred (no ``index`` either)."""
    if index is None or not index.centre:
        return text_vecs, item_vecs
    kinds = [Modality.TEXT.value] * len(text_vecs) + [modality] * len(item_vecs)
    centre = centring.fit(np.concatenate([text_vecs, item_vecs]), kinds, index.centre, index.centre_min_items)
    if not centre.means:
        return text_vecs, item_vecs
    return centre.apply(text_vecs, Modality.TEXT.value), centre.apply(item_vecs, modality)


def score_all(model: RetrievalModel, frame: pd.DataFrame, root: Path, media_column: str,
              ks: Sequence[int] = KS, index: IndexParams | None = None) -> dict[str, Scored]:
    """:func:`score_detailed` for every media modality of ``frame`` that the model has a tower for."""
    present = [m for m in MEDIA_LETTER if m in set(frame["modality"]) and m in model.modalities]
    if not present:
        raise TrainingError(f"nothing to evaluate: no {list(MEDIA_LETTER)} rows the model can encode")
    return {m: score_detailed(model, frame, root, media_column, ks, m, index) for m in present}


def score(model: RetrievalModel, frame: pd.DataFrame, root: Path, media_column: str,
          ks: Sequence[int] = KS, index: IndexParams | None = None) -> dict[str, float]:
    merged: dict[str, float] = {}
    for scored in score_all(model, frame, root, media_column, ks, index).values():
        merged |= scored.metrics
    merged["items"] = sum(v for k, v in merged.items() if k.endswith("_items"))
    return merged


def metrics_summary(metrics: dict[str, float], gate_metric: str) -> str:
    """The recall@K metrics (and the gate's metric) of an evaluation as one line for a model version's
    description, e.g. ``t2i_recall@1=0.500, ...``."""
    from mmretrieval.evaluation.metrics import resolve_metric

    gate = resolve_metric(gate_metric, metrics)
    keep = [k for k in sorted(metrics) if k == gate or ("recall@" in k and not k.startswith("raw_")
                                                        and not k.endswith(CHANCE_SUFFIX))]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in keep) + (f" (on {int(metrics.get('items', 0))} test items)")
