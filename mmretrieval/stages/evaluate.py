"""Stage ``evaluate``: score the challenger (and the champion, on the same frozen test split), exact search.

Output ``data/reports/<dataset>/evaluate.json`` (+ ``evaluate.html``); metrics are also logged on the challenger's
MLflow run with a ``test_`` prefix. :func:`evaluate_manifest` scores a dataset's champion on any manifest.

Vectors of the modalities in ``index.centre`` are centred on the mean of the evaluated items of that modality, as
publishing centres them on the collection's (:mod:`mmretrieval.evaluation.centring`); the uncentred metrics are kept beside
them with a ``raw_`` prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.core.config import IndexParams, Settings, get_settings
from mmretrieval.core.contracts import EvaluateResult
from mmretrieval.core.errors import MediaError, TrainingError
from mmretrieval.core.io import write_json
from mmretrieval.core.layout import read_clean
from mmretrieval.core.locks import per_dataset
from mmretrieval.core.schema import Modality, Split, read_manifest, split_captions
from mmretrieval.evaluation import centring
from mmretrieval.evaluation.metrics import CHANCE_SUFFIX, EvalSet, both_directions, build_eval_set
from mmretrieval.media.image import open_image

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

    from mmretrieval.models.dual_encoder import RetrievalModel

log = logging.getLogger(__name__)
KS = (1, 5, 10)


def captions_of(row: Any) -> list[str]:
    """A row's captions; a labelled row without text uses its label as its caption."""
    caps = split_captions(row["text"])
    return caps or ([str(row["label"])] if row["label"] else [])


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


@per_dataset("gate")  # locks.py: a second run of this dataset waits
def run(dataset: str, settings: Settings | None = None, version: str | None = None) -> EvaluateResult:
    """Score the ``challenger`` (or exactly model ``version``, the one a train step of this run registered) and the
    champion on the test split; each version's result is also kept on its own (``Layout.evaluation``)."""
    from mmretrieval.models.dual_encoder import pick_device

    settings = settings or get_settings()
    device = pick_device(settings.device)
    layout = settings.layout(dataset)
    clean = read_clean(layout)
    frame, root, data_version = clean.frame[clean.frame["split"] == Split.TEST.value], clean.root, clean.data_version
    if frame.empty:
        raise TrainingError(f"dataset {dataset!r} has no test rows: set split ratios in params.yaml or a split column")
    result: dict[str, Any] = {"dataset": dataset, "data_version": data_version, "split": "test",
                              "test_items": int(len(frame))}
    figures: dict[str, Path] = {}
    out = layout.reports
    out.mkdir(parents=True, exist_ok=True)
    for alias in (tracking.CHALLENGER, tracking.CHAMPION):
        ref = tracking.get_alias(settings, dataset, alias)
        if alias == tracking.CHALLENGER and version is not None:
            ref = tracking.get_version(settings, settings.registered_model(dataset), version)
        if ref is None:
            if alias == tracking.CHALLENGER:
                tracking.require_alias(settings, dataset, alias)
            result[alias] = None
            continue
        per_modality = score_all(tracking.load_model(settings, ref, device), frame, root, "media",
                                 index=settings.params_for(dataset).index)
        metrics = {k: v for scored in per_modality.values() for k, v in scored.metrics.items()}
        metrics["items"] = sum(v for k, v in metrics.items() if k.endswith("_items"))
        result[alias] = {"version": ref.version, "run_id": ref.run_id, "metrics": metrics}
        if alias == tracking.CHALLENGER:
            from mmretrieval.evaluation.report import recall_curve_png, retrieval_grid_png

            for modality, scored in per_modality.items():
                figures[f"{modality}: recall@K curve"] = recall_curve_png(
                    out / f"recall_curve_{modality}.png", scored.sim, scored.eval_set, media=modality)
                if scored.images:
                    figures[f"{modality}: example retrievals"] = retrieval_grid_png(
                        out / f"retrievals_{modality}.png", scored.sim, scored.eval_set, scored.images)
    write_json(layout.evaluation_latest, result)
    write_json(layout.evaluation(result[tracking.CHALLENGER]["version"]), result)
    from mmretrieval.evaluation.report import write_evaluation_html

    html = write_evaluation_html(out / "evaluate.html", result, figures)
    challenger = result[tracking.CHALLENGER]
    tracking.log_run(settings, challenger["run_id"], metrics={f"test_{k}": v for k, v in challenger["metrics"].items()},
                     artifacts=[layout.evaluation_latest, html, *figures.values()])
    registered = tracking.get_version(settings, settings.registered_model(dataset), challenger["version"])
    gate_metric = settings.params_for(dataset).gate.metric
    tracking.describe_version(settings, registered, test_metrics=metrics_summary(challenger["metrics"], gate_metric))
    log.info("evaluate %s: challenger v%s %s", dataset, challenger["version"],
             {k: round(v, 3) for k, v in challenger["metrics"].items() if "recall" in k})
    return EvaluateResult(dataset, challenger["version"], challenger["version"],
                          (result[tracking.CHAMPION] or {}).get("version"),
                          {k: round(v, 4) for k, v in challenger["metrics"].items()}, str(layout.evaluation_latest))


def evaluate_manifest(dataset: str, manifest: Path, settings: Settings | None = None,
                      alias: str = tracking.CHAMPION) -> dict[str, Any]:
    """Score the dataset's ``alias`` model on every image and audio row of any manifest (media relative to it)."""
    from mmretrieval.models.dual_encoder import pick_device

    settings = settings or get_settings()
    frame = read_manifest(manifest)
    ref = tracking.require_alias(settings, dataset, alias)
    model = tracking.load_model(settings, ref, pick_device(settings.device))
    metrics = score(model, frame, manifest.parent, "path", index=settings.params_for(dataset).index)
    return {"dataset": dataset, "manifest": str(manifest), "model": ref.name, "model_version": ref.version,
            "alias": alias, **{k: round(v, 4) for k, v in metrics.items()}}
