"""Stage ``evaluate``: score the challenger (and the champion, on the same frozen test split), exact search.

Output ``data/reports/<dataset>/evaluate.json`` (+ ``evaluate.html``); metrics are also logged on the challenger's
MLflow run with a ``test_`` prefix. :func:`evaluate_manifest` scores a dataset's champion on any manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval import tracking
from mmretrieval.config import Settings, get_settings
from mmretrieval.errors import MediaError, TrainingError
from mmretrieval.io import read_json, read_parquet, write_json
from mmretrieval.media import open_image
from mmretrieval.metrics import build_eval_set, both_directions
from mmretrieval.schema import Modality, Split, read_manifest, split_captions

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.models.dual_encoder import RetrievalModel

log = logging.getLogger(__name__)
KS = (1, 5, 10)


def captions_of(row: Any) -> list[str]:
    """A row's captions; a labelled row without text uses its label as its caption."""
    caps = split_captions(row["text"])
    return caps or ([str(row["label"])] if row["label"] else [])


def score(model: RetrievalModel, frame: pd.DataFrame, root: Path, media_column: str,
          ks: Sequence[int] = KS) -> dict[str, float]:
    """Both-direction metrics for the image rows of ``frame`` (media paths relative to ``root``)."""
    rows = frame[(frame["modality"] == Modality.IMAGE.value)]
    ids, images, captions, labels = [], [], [], []
    skipped = 0
    for _, row in rows.iterrows():
        caps = captions_of(row)
        if not caps:
            continue
        try:
            images.append(open_image(root / row[media_column]))
        except (MediaError, OSError):
            skipped += 1
            continue
        ids.append(row["id"])
        captions.append(caps)
        labels.append(str(row["label"]))
    if len(ids) < 2:
        raise TrainingError(f"only {len(ids)} image item(s) with captions to evaluate on; need at least 2")
    eval_set = build_eval_set(ids, captions, labels)
    metrics = both_directions(model.encode_texts(eval_set.captions), model.encode_images(images), eval_set, ks)
    metrics["items"] = float(len(ids))
    metrics["skipped_undecodable"] = float(skipped)
    return metrics


def test_frame(settings: Settings, dataset: str) -> tuple[pd.DataFrame, Path]:
    clean_dir = settings.stage_dir("clean", dataset)
    clean = read_parquet(clean_dir / "manifest.parquet", f"clean manifest of {dataset!r}")
    return clean[clean["split"] == Split.TEST.value], clean_dir


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    from mmretrieval.models.dual_encoder import pick_device

    settings = settings or get_settings()
    device = pick_device(settings.device)
    frame, root = test_frame(settings, dataset)
    data_version = str(read_json(root / "report.json", "clean report")["data_version"])
    if frame.empty:
        raise TrainingError(f"dataset {dataset!r} has no test rows: set split ratios in params.yaml or a split column")
    result: dict[str, Any] = {"dataset": dataset, "data_version": data_version, "split": "test",
                              "test_items": int(len(frame))}
    for alias in (tracking.CHALLENGER, tracking.CHAMPION):
        ref = tracking.get_alias(settings, dataset, alias)
        if ref is None:
            if alias == tracking.CHALLENGER:
                tracking.require_alias(settings, dataset, alias)
            result[alias] = None
            continue
        metrics = score(tracking.load_model(settings, ref, device), frame, root, "media")
        result[alias] = {"version": ref.version, "run_id": ref.run_id, "metrics": metrics}
    out = settings.stage_dir("reports", dataset)
    write_json(out / "evaluate.json", result)
    from mmretrieval.report import write_evaluation_html

    html = write_evaluation_html(out / "evaluate.html", result)
    challenger = result[tracking.CHALLENGER]
    tracking.log_run(settings, challenger["run_id"], metrics={f"test_{k}": v for k, v in challenger["metrics"].items()},
                     artifacts=[out / "evaluate.json", html])
    log.info("evaluate %s: challenger v%s %s", dataset, challenger["version"],
             {k: round(v, 3) for k, v in challenger["metrics"].items() if "recall" in k})
    return {"dataset": dataset, "challenger": challenger["version"],
            "champion": (result[tracking.CHAMPION] or {}).get("version"),
            "metrics": {k: round(v, 4) for k, v in challenger["metrics"].items()},
            "report": str(out / "evaluate.json")}


def evaluate_manifest(dataset: str, manifest: Path, settings: Settings | None = None,
                      alias: str = tracking.CHAMPION) -> dict[str, Any]:
    """Score the dataset's ``alias`` model on every image row of any manifest (media relative to it)."""
    from mmretrieval.models.dual_encoder import pick_device

    settings = settings or get_settings()
    frame = read_manifest(manifest)
    ref = tracking.require_alias(settings, dataset, alias)
    model = tracking.load_model(settings, ref, pick_device(settings.device))
    metrics = score(model, frame, manifest.parent, "path")
    return {"dataset": dataset, "manifest": str(manifest), "model": ref.name, "model_version": ref.version,
            "alias": alias, **{k: round(v, 4) for k, v in metrics.items()}}
