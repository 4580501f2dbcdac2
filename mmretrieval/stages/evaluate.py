"""Stage ``evaluate``: score the challenger (and the champion, on the same frozen test split), exact search.

Output ``data/reports/<dataset>/evaluate.json`` (+ ``evaluate.html``); metrics are also logged on the challenger's
MLflow run with a ``test_`` prefix. :func:`evaluate_manifest` scores a dataset's champion on any manifest.

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
from mmretrieval.core.errors import TrainingError
from mmretrieval.core.io import write_json
from mmretrieval.core.layout import read_clean
from mmretrieval.core.schema import Split, read_manifest
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.evaluation.calibration import TAG, summary
from mmretrieval.evaluation.calibration import from_evaluation as calibrate_scored
from mmretrieval.evaluation.evaluator import RetrievalEvaluator, metrics_summary
from mmretrieval.serving import loading

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
        per_modality = evaluator.score(loading.load_model(settings, ref, device))
        metrics = evaluator.merge(per_modality)
        result[alias] = {"version": ref.version, "run_id": ref.run_id, "metrics": metrics}
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
                      alias: str = tracking.CHAMPION) -> dict[str, Any]:
    """Score the dataset's ``alias`` model on every image, audio and video row of any manifest (media relative to
    it)."""
    from mmretrieval.models.dual_encoder import pick_device

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    evaluator = RetrievalEvaluator(read_manifest(manifest), manifest.parent, media_column="path", index=params.index,
                                   primary_metric=params.gate.metric)
    ref = tracking.require_alias(settings, dataset, alias)
    metrics = evaluator(loading.load_model(settings, ref, pick_device(settings.device)))
    return {"dataset": dataset, "manifest": str(manifest), "model": ref.name, "model_version": ref.version,
            "alias": alias, **{k: round(v, 4) for k, v in metrics.items()}}
