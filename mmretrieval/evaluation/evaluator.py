"""The evaluator, with sentence-transformers' contract: built from the data, called with a model, it returns
``dict[str, float]`` of retrieval metrics, and names its :attr:`~RetrievalEvaluator.primary_metric`.

One evaluator serves training's validation (:class:`~mmretrieval.training.loop.Validator`), the evaluate stage and
``mmr evaluate --manifest`` (:mod:`mmretrieval.stages.evaluate`) and the re-rank stage's inputs
(:func:`~mmretrieval.training.rerank_inputs.split_inputs`)::

    evaluator = RetrievalEvaluator(test_frame, clean_dir, index=params.index, primary_metric=params.gate.metric)
    metrics = evaluator(model)  # {"t2i_recall@1": 0.52, "t2i_recall@1_chance": 0.01, ..., "items": 200.0}
    metrics[evaluator.primary_metric]

Metric names are ``t2i_*``/``i2t_*`` (image), ``t2a_*``/``a2t_*`` (audio), ``t2v_*``/``v2t_*`` (video), each with
its chance level (:mod:`mmretrieval.evaluation.metrics`); how each modality is decoded and encoded comes from
:mod:`mmretrieval.models.modalities`. With ``index`` (the serving settings) the modalities in ``index.centre`` are
centred on the evaluated items' means, as publishing centres a collection on its own, and the uncentred metrics
are added as ``raw_*``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.core.errors import MediaError, TrainingError
from mmretrieval.core.params import IndexParams
from mmretrieval.core.progress import progress
from mmretrieval.core.schema import Modality, captions_of
from mmretrieval.evaluation import centring
from mmretrieval.evaluation.metrics import CHANCE_SUFFIX, EvalSet, both_directions, build_eval_set, resolve_metric
from mmretrieval.media.text import normalize_captions
from mmretrieval.models.modalities import MEDIA_MODALITIES, media_modality

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from mmretrieval.core.params import IndexParams
    from mmretrieval.models.dual_encoder import RetrievalModel


KS = (1, 5, 10)


@dataclass(frozen=True)
class Decoded:
    """One modality's evaluated items: the split's rows of that modality with captions whose file decoded."""

    modality: str
    ids: list[str]
    media: list[Any]  # decoded as :attr:`MediaModality.load <mmretrieval.models.modalities.MediaModality>` does
    eval_set: EvalSet  # (captions, items) relevance by caption and label
    skipped: int  # rows left out because their file did not decode


@dataclass
class Scored:
    """Metrics plus what the report's figures need."""

    metrics: dict[str, float]
    eval_set: EvalSet
    sim: np.ndarray  # (captions, items) cosine similarities
    images: list[Image.Image]
    decoded: Decoded | None = None  # the items scored (ids, decoded media), for the search modes' rankers


class RetrievalEvaluator:
    """Text <-> media retrieval metrics of a model on the media rows of ``frame`` (files relative to ``root`` in
    ``media_column``), exact search over the split, cut at ``ks``.

    ``primary_metric`` is the metric that decides (the gate's, e.g. ``t2i_recall@10``); after each call it names
    the key it resolved to in the returned metrics (its audio or video twin on data without images,
    :func:`~mmretrieval.evaluation.metrics.resolve_metric`).
    """

    def __init__(self, frame: pd.DataFrame, root: Path, *, primary_metric: str, media_column: str = "media",
                 ks: Sequence[int] = KS, index: IndexParams | None = None) -> None:
        self.frame, self.root, self.media_column, self.ks, self.index = frame, root, media_column, tuple(ks), index
        self.metric = self.primary_metric = primary_metric
        present = set(frame["modality"])
        self.modalities = [m for m in MEDIA_MODALITIES if m in present]  # in the table's order

    def __call__(self, model: RetrievalModel) -> dict[str, float]:
        """Every metric of every media modality the model has a tower for, plus ``<modality>_items``,
        ``<modality>_skipped_undecodable`` and ``items`` (all evaluated items). Raises :class:`TrainingError` when
        there is nothing to evaluate."""
        return self.merge(self.score(model))

    def score(self, model: RetrievalModel) -> dict[str, Scored]:
        """:meth:`score_modality` for every media modality of the data that the model has a tower for."""
        present = [m for m in self.modalities if m in model.modalities]
        if not present:
            raise TrainingError(f"nothing to evaluate: no {list(MEDIA_MODALITIES)} rows the model can encode")
        return {m: self.score_modality(model, m) for m in present}

    def merge(self, per_modality: dict[str, Scored]) -> dict[str, float]:
        """The metrics of :meth:`score`'s modalities in one dict, with ``items``; resolves :attr:`primary_metric`."""
        merged: dict[str, float] = {}
        for scored in per_modality.values():
            merged |= scored.metrics
        merged["items"] = sum(v for k, v in merged.items() if k.endswith("_items"))
        self.resolve_primary(merged)
        return merged

    def score_modality(self, model: RetrievalModel, modality: str) -> Scored:
        """Both-direction metrics between the captions and the ``modality`` items, with the similarities (and, for
        images, the decoded images) the report's figures draw. Raises :class:`TrainingError` (fewer than two
        items)."""
        decoded = self.decode(model, modality)
        kind = media_modality(modality)
        metrics, text_vecs, item_vecs = self.metrics_of(model.encode_texts(decoded.eval_set.captions),
                                                        kind.encode(model, decoded.media), decoded)
        metrics[f"{modality}_items"] = float(len(decoded.ids))
        metrics[f"{modality}_skipped_undecodable"] = float(decoded.skipped)
        images = decoded.media if modality == Modality.IMAGE.value else []
        return Scored(metrics, decoded.eval_set, text_vecs @ item_vecs.T, images, decoded)

    def decode(self, model: RetrievalModel, modality: str, captioned: bool = True) -> Decoded:
        """The ``modality`` rows that have captions (every row with ``captioned`` False: a gallery for queries of
        one's own), decoded as the model takes them; a row whose file does not decode is skipped and counted. Raises
        :class:`TrainingError` when fewer than two items are left."""
        load = media_modality(modality).load
        ids, media, captions, labels = [], [], [], []
        skipped = 0
        rows = self.frame[self.frame["modality"] == modality]
        for _, row in progress(rows.iterrows(), f"decode {modality} items", total=len(rows)):
            caps = normalize_captions(captions_of(row))  # a manifest of `evaluate --manifest` is not cleaned
            if captioned and not caps:
                continue
            try:
                media.append(load(model.config, self.root / row[self.media_column]))
            except (MediaError, OSError):
                skipped += 1
                continue
            ids.append(row["id"])
            captions.append(caps)
            labels.append(str(row["label"]))
        if len(ids) < 2:
            raise TrainingError(f"only {len(ids)} {modality} item(s){' with captions' if captioned else ''} to "
                                "evaluate on; need at least 2")
        return Decoded(modality, ids, media, build_eval_set(ids, captions, labels), skipped)

    def metrics_of(self, text_vecs: np.ndarray, item_vecs: np.ndarray, decoded: Decoded
                   ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """:func:`metrics_from_vectors` of (captions, D) text and (items, D) item unit vectors of ``decoded``, with
        this evaluator's ``ks`` and centring."""
        return metrics_from_vectors(text_vecs, item_vecs, decoded.eval_set, decoded.modality, self.ks, self.index)

    def centred(self, text_vecs: np.ndarray, item_vecs: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """:func:`centred` with this evaluator's centring settings."""
        return centred(text_vecs, item_vecs, modality, self.index)

    def resolve_primary(self, metrics: dict[str, float]) -> str:
        """The key of the primary metric among ``metrics`` (the configured name, or its audio/video twin; the
        configured name when neither is there), kept as :attr:`primary_metric`."""
        self.primary_metric = resolve_metric(self.metric, metrics) or self.metric
        return self.primary_metric


def metrics_from_vectors(text_vecs: np.ndarray, item_vecs: np.ndarray, eval_set: EvalSet, modality: str,
                         ks: Sequence[int] = KS, index: IndexParams | None = None
                         ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Both-direction metrics (each with its chance level) of (captions, D) text and (items, D) ``modality`` unit
    vectors, named with the modality's letter (``t2i_*``/``i2t_*``, ``t2a_*``/``a2t_*``, ``t2v_*``/``v2t_*``);
    centred as :func:`centred` says, the uncentred metrics then kept as ``raw_*``. Returns the metrics and the
    vectors they were computed on."""
    letter = media_modality(modality).letter

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
    ``index.centre`` centred on the means of these vectors (:mod:`mmretrieval.evaluation.centring`), as publishing
    centres a collection on its own; the same arrays when nothing is centred (no ``index`` either)."""
    if index is None or not index.centre:
        return text_vecs, item_vecs
    kinds = [Modality.TEXT.value] * len(text_vecs) + [modality] * len(item_vecs)
    centre = centring.fit(np.concatenate([text_vecs, item_vecs]), kinds, index.centre, index.centre_min_items)
    if not centre.means:
        return text_vecs, item_vecs
    return centre.apply(text_vecs, Modality.TEXT.value), centre.apply(item_vecs, modality)


def metrics_summary(metrics: dict[str, float], gate_metric: str) -> str:
    """The recall@K metrics (and the gate's metric) of an evaluation as one line for a model version's
    description, e.g. ``t2i_recall@1=0.500, ...``."""
    gate = resolve_metric(gate_metric, metrics)
    keep = [k for k in sorted(metrics) if k == gate or ("recall@" in k and not k.startswith("raw_")
                                                        and not k.endswith(CHANCE_SUFFIX))]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in keep) + (f" (on {int(metrics.get('items', 0))} test items)")
