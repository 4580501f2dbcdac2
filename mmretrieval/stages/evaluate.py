"""Stage ``evaluate``: score the challenger (and the champion, on the same frozen test split), exact search.

Output ``data/reports/<dataset>/evaluate.json`` (+ ``evaluate.html``); metrics are also logged on the challenger's
MLflow run with a ``test_`` prefix. :func:`evaluate_manifest` scores a dataset's champion on any manifest.

Each version is also scored in the other search modes it serves (:mod:`mmretrieval.serving.modes`: re-ranked by
its gated re-ranker), text -> items, as ``"modes": {"reranked/t2i_recall@10": ...}`` beside its ``metrics`` (the
dual encoder's, which the promotion gate reads); the HTML report shows them side by side.

The scoring is the evaluator's (:class:`~mmretrieval.evaluation.evaluator.RetrievalEvaluator`): vectors of the
modalities in ``index.centre`` are centred on the mean of the evaluated items of that modality, as publishing centres
them on the collection's (:mod:`mmretrieval.evaluation.centring`); the uncentred metrics are kept beside them with a
``raw_`` prefix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.backends import tracking
from mmretrieval.backends.locks import per_dataset
from mmretrieval.core.contracts import EvaluateResult
from mmretrieval.core.errors import ManifestError, TrainingError
from mmretrieval.core.io import write_json
from mmretrieval.core.layout import read_clean
from mmretrieval.core.schema import Split, read_manifest
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.evaluation.calibration import TAG, summary
from mmretrieval.evaluation.calibration import from_evaluation as calibrate_scored
from mmretrieval.evaluation.evaluator import RetrievalEvaluator, metrics_summary
from mmretrieval.evaluation.modes import SEPARATOR, VECTOR, prefixed, ranking_metrics
from mmretrieval.evaluation.queries import QuerySet, read_queries
from mmretrieval.serving import loading
from mmretrieval.serving.modes import MODES, Gallery, ModeContext, rankers

if TYPE_CHECKING:
    from mmretrieval.core.params import CalibrationParams
    from mmretrieval.evaluation.calibration import Calibration

log = logging.getLogger(__name__)


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
    params = settings.params_for(dataset)
    evaluator = RetrievalEvaluator(frame, root, index=params.index, primary_metric=params.gate.metric)
    result: dict[str, Any] = {"dataset": dataset, "data_version": data_version, "split": "test",
                              "test_items": int(len(frame))}
    figures: dict[str, Path] = {}
    calibration = None
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
        model = loading.load_model(settings, ref, device)
        per_modality = evaluator.score(model)
        metrics = evaluator.merge(per_modality)
        result[alias] = {"version": ref.version, "run_id": ref.run_id, "metrics": metrics,
                         "modes": caption_mode_metrics(settings, dataset, ref, model, per_modality, frame,
                                                       exclude=(VECTOR,))}
        if alias == tracking.CHALLENGER:
            from mmretrieval.evaluation.report import recall_curve_png, retrieval_grid_png

            calibration = calibrate(per_modality, params.calibration)
            result["calibration"] = summary(calibration)

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
    if calibration is not None:  # publish copies it onto the collection (mmretrieval.evaluation.calibration)
        tracking.tag_version(settings, registered, {TAG: calibration.to_json()})
    tracking.describe_version(settings, registered,
                              test_metrics=metrics_summary(challenger["metrics"], params.gate.metric))
    log.info("evaluate %s: challenger v%s %s", dataset, challenger["version"],
             {k: round(v, 3) for k, v in challenger["metrics"].items() if "recall" in k})
    return EvaluateResult(dataset, challenger["version"], challenger["version"],
                          (result[tracking.CHAMPION] or {}).get("version"),
                          {k: round(v, 4) for k, v in challenger["metrics"].items()}, str(layout.evaluation_latest))


def calibrate(per_modality: dict[str, Any], params: CalibrationParams) -> Calibration:
    """The challenger's score calibration from its test scores (a pair with too few queries is recorded as
    uncalibrated with the reason, never an error: docs/serving.md#no-good-match)."""
    calibration = calibrate_scored(per_modality, top_k=params.top_k, min_queries=params.min_queries)
    for key, why in calibration.uncalibrated.items():
        log.warning("evaluate: %s left uncalibrated (no confidence, no no_good_match at serving): %s", key, why)
    return calibration


def evaluate_manifest(dataset: str, manifest: Path, settings: Settings | None = None,
                      alias: str = tracking.CHAMPION, queries: Path | None = None) -> dict[str, Any]:
    """Score the dataset's ``alias`` model on every image, audio and video row of any manifest (media relative to
    it), in every search mode that version serves (:mod:`mmretrieval.serving.modes`): ``vector/<metric>`` (the dual
    encoder; both directions, as the evaluate stage) and, where it serves a gated re-ranker, ``reranked/<metric>``
    (text -> items). The queries are the manifest's captions, or with ``queries`` a CSV of one's own
    (:func:`query_set_metrics`). Counts of items stay unprefixed. Raises :class:`ManifestError` (the manifest or
    the query file), :class:`TrainingError` (nothing to evaluate)."""
    from mmretrieval.models.dual_encoder import pick_device

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    frame = read_manifest(manifest)
    repeated = sorted(set(frame.loc[frame["id"].astype(str).duplicated(), "id"].astype(str)))
    if repeated:
        raise ManifestError(f"manifest {manifest} repeats id(s) {repeated[:5]}: every item needs its own id")
    evaluator = RetrievalEvaluator(frame, manifest.parent, media_column="path", index=params.index,
                                   primary_metric=params.gate.metric)
    query_set = None if queries is None else read_queries(queries, set(frame["id"].astype(str)))
    ref = tracking.require_alias(settings, dataset, alias)
    model = loading.load_model(settings, ref, pick_device(settings.device))
    head = {"dataset": dataset, "manifest": str(manifest), "model": ref.name, "model_version": ref.version,
            "alias": alias}
    if query_set is not None:
        return head | {"queries_file": str(queries)} | query_set_metrics(settings, dataset, ref, model, evaluator,
                                                                               query_set)
    per_modality = evaluator.score(model)
    counts, metrics = split_counts(evaluator.merge(per_modality))
    extra = caption_mode_metrics(settings, dataset, ref, model, per_modality, frame, exclude=(VECTOR,))
    modes = [VECTOR] + sorted({k.split(SEPARATOR, 1)[0] for k in extra})
    return head | {"modes": modes} | counts | {k: round(v, 4) for k, v in (prefixed(VECTOR, metrics) | extra).items()}


def split_counts(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(item counts, metrics) of an evaluator's result: ``items``, ``<modality>_items`` and
    ``<modality>_skipped_undecodable`` describe the data, not a search mode, so they stay unprefixed."""
    is_count = [k for k in metrics if k == "items" or k.endswith(("_items", "_skipped_undecodable"))]
    return {k: metrics[k] for k in is_count}, {k: v for k, v in metrics.items() if k not in is_count}


def gallery_of(decoded: Any, frame: Any) -> Gallery:
    """The :class:`~mmretrieval.serving.modes.Gallery` of an evaluator's decoded items (``Decoded``), their manifest
    rows looked up in ``frame`` by id."""
    rows = {str(r["id"]): r for r in frame.to_dict("records")}
    return Gallery(decoded.modality, list(decoded.ids), list(decoded.media), [rows[str(i)] for i in decoded.ids])


def mode_context(settings: Settings, dataset: str, ref: tracking.ModelRef, model: Any, gallery: Gallery
                 ) -> ModeContext:
    """The search modes' context for version ``ref`` of ``dataset`` over ``gallery`` (its index and rerank params)."""
    params = settings.params_for(dataset)
    return ModeContext(settings, ref, model, gallery, params.index, params.rerank)


def caption_mode_metrics(settings: Settings, dataset: str, ref: tracking.ModelRef, model: Any,
                         per_modality: dict[str, Any], frame: Any, exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """``<mode>/t2<letter>_*`` metrics (each with its chance level) of every search mode but ``exclude`` that
    version ``ref`` serves, per modality of the evaluator's ``per_modality`` result (its captions as the queries,
    its relevance by caption and label)."""
    from mmretrieval.models.modalities import media_modality

    out: dict[str, float] = {}
    for modality, scored in per_modality.items():
        ctx = mode_context(settings, dataset, ref, model, gallery_of(scored.decoded, frame))
        for mode, rank in rankers(ctx, [m for m in MODES if m not in exclude]).items():
            es = scored.eval_set
            out |= prefixed(mode, ranking_metrics(rank(es.captions), es.relevant, es.item_ids,
                                                  f"t2{media_modality(modality).letter}", ctx.ks))
    return out


def query_set_metrics(settings: Settings, dataset: str, ref: tracking.ModelRef, model: Any,
                      evaluator: RetrievalEvaluator, query_set: QuerySet) -> dict[str, Any]:
    """``<mode>/t2<letter>_*`` metrics of a query file in every search mode version ``ref`` serves, per media
    modality the model encodes (the gallery: all of that modality's manifest rows that decode, captioned or not);
    a query is scored in the modalities holding one of its relevant items. Also ``queries`` (in the file),
    ``<modality>_items`` and ``modes``. Raises :class:`TrainingError` when no query has a relevant item the model
    can rank."""
    from mmretrieval.models.modalities import media_modality

    out: dict[str, Any] = {"queries": len(query_set.queries)}
    metrics: dict[str, float] = {}
    modes: list[str] = []
    for modality in [m for m in evaluator.modalities if m in model.modalities]:
        decoded = evaluator.decode(model, modality, captioned=False)
        relevant = query_set.relevance(decoded.ids)
        out |= {f"{modality}_items": len(decoded.ids), f"{modality}_skipped_undecodable": decoded.skipped}
        if not relevant.any():
            continue
        ctx = mode_context(settings, dataset, ref, model, gallery_of(decoded, evaluator.frame))
        for mode, rank in rankers(ctx).items():
            modes += [mode] if mode not in modes else []
            metrics |= prefixed(mode, ranking_metrics(rank(query_set.queries), relevant, decoded.ids,
                                                      f"t2{media_modality(modality).letter}", ctx.ks))
    if not metrics:
        raise TrainingError(f"no query of the query file has a relevant item among the manifest's "
                            f"{evaluator.modalities} items the model ranks (relevant ids of other modalities, e.g. "
                            "text rows, cannot be scored)")
    return out | {"modes": modes} | {k: round(v, 4) for k, v in metrics.items()}
