"""The stage verbs, in pipeline order. The CLI, ``dvc.yaml`` and the Airflow DAG all call these same functions.

Each takes ``(dataset, settings=None)`` and returns a small JSON-able dict (paths, counts, metrics, versions).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

from mmretrieval.config import Settings, get_settings

log = logging.getLogger(__name__)

# verb -> module whose run(dataset, settings) implements it
STAGES: dict[str, str] = {
    "validate": "mmretrieval.prep.validate",
    "clean": "mmretrieval.prep.clean",
    "augment": "mmretrieval.prep.augment",
    "train": "mmretrieval.train",
    "evaluate": "mmretrieval.evaluate",
    "rerank": "mmretrieval.rerank",  # the challenger's cross-attention re-ranker (when rerank.enabled)
    "promote": "mmretrieval.promote",
    "embed": "mmretrieval.embed",
    "publish": "mmretrieval.publish",
}


def stage(verb: str) -> Callable[..., dict[str, Any]]:
    """The ``run`` function of a stage verb (imported lazily: heavy modules load only when used)."""
    if verb not in STAGES:
        raise KeyError(f"unknown stage {verb!r}; stages: {list(STAGES)}")
    fn: Callable[..., dict[str, Any]] = importlib.import_module(STAGES[verb]).run
    return fn


def run_stage(verb: str, dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    """Run one stage and keep its result in ``data/reports/<dataset>/stages/<verb>.json`` (audit trail, DVC out)."""
    from mmretrieval.io import write_json

    settings = settings or get_settings()
    started = time.monotonic()
    result = stage(verb)(dataset, settings)
    write_json(settings.stage_dir("reports", dataset) / "stages" / f"{verb}.json", result)
    log.info("%s %s done in %.1fs", verb, dataset, time.monotonic() - started)
    return result


def run_all(dataset: str, settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Every stage in order, without Airflow (``mmr run``)."""
    settings = settings or get_settings()
    return {verb: run_stage(verb, dataset, settings) for verb in STAGES}
