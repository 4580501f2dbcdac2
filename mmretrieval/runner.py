"""The stage verbs, in pipeline order. The CLI, ``dvc.yaml`` and the Airflow DAG all call these same functions.

Each stage's ``run(dataset, settings=None, **inputs)`` returns its typed result (:mod:`mmretrieval.core.contracts`:
``ValidateResult`` ... ``PublishResult``; embed's summary still a JSON dict) of paths, counts, metrics and versions;
:func:`run_stage` keeps its JSON form and returns it, and with a shared data store (``MMR_DATA_URL``) pulls the
stage's inputs before and pushes its outputs after (:mod:`mmretrieval.handoff`).
``inputs`` are what an earlier step of the same run pinned:
``evaluate``, ``rerank`` (that version's cross-attention re-ranker) and ``promote`` take the ``version`` their run's
``train`` registered; ``embed`` and ``publish`` take the ``pinned`` model and data version
(:class:`~mmretrieval.core.contracts.Pinned`) resolved once at the start of serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from mmretrieval.core.contracts import StageResult
from mmretrieval.core.settings import Settings, get_settings

log = logging.getLogger(__name__)

STAGES = ("validate", "clean", "augment", "train", "evaluate", "rerank", "promote", "embed", "publish")


def stage(verb: str) -> Callable[..., StageResult | dict[str, Any]]:
    """The ``run`` function of a stage verb (imported on use: heavy modules load only when their stage runs)."""
    if verb == "validate":
        from mmretrieval.stages.validate import run
    elif verb == "clean":
        from mmretrieval.stages.clean import run
    elif verb == "augment":
        from mmretrieval.stages.augment import run
    elif verb == "train":
        from mmretrieval.stages.train import run
    elif verb == "evaluate":
        from mmretrieval.stages.evaluate import run
    elif verb == "rerank":  # the challenger's cross-attention re-ranker (rerank.enabled: auto, true, false)
        from mmretrieval.stages.rerank import run
    elif verb == "promote":
        from mmretrieval.stages.promote import run
    elif verb == "embed":
        from mmretrieval.stages.embed import run
    elif verb == "publish":
        from mmretrieval.stages.publish import run
    else:
        raise KeyError(f"unknown stage {verb!r}; stages: {list(STAGES)}")
    return run


def run_stage(verb: str, dataset: str, settings: Settings | None = None, **inputs: Any) -> dict[str, Any]:
    """Run one stage and keep its result in ``data/reports/<dataset>/stages/<verb>.json`` (audit trail, DVC out).

    With a shared data store (``MMR_DATA_URL``) its inputs are pulled first and its outputs pushed after
    (:func:`mmretrieval.handoff.synced`); without one nothing else happens."""
    from mmretrieval.core.io import write_json
    from mmretrieval.handoff import synced

    settings = settings or get_settings()
    started = time.monotonic()
    with synced(verb, dataset, settings, inputs):
        result = stage(verb)(dataset, settings, **inputs)
        if isinstance(result, StageResult):
            result = result.to_json()
        write_json(settings.layout(dataset).stage_result(verb), result)
    log.info("%s %s done in %.1fs", verb, dataset, time.monotonic() - started)
    return result


MODEL_STEPS = ("evaluate", "rerank", "promote")  # what acts on the model a run's train step registered


def passed_over(verb: str, trained: dict[str, Any]) -> dict[str, Any] | None:
    """What a model step (:data:`MODEL_STEPS`) returns instead of running when its run's ``train`` kept the champion
    (``train.when``): the dataset, ``skipped``, train's reason and the champion's ``model_version``; None when
    ``train`` trained a model (run the step). Logged, so the step's log (an Airflow task log) says which way the run
    went and why; a step's result passed to the next step passes over it too."""
    if not trained.get("skipped"):
        return None
    log.info("%s %s: skipped: train kept champion v%s (no new model to %s): %s", verb, trained["dataset"],
             trained["model_version"], verb, trained.get("reason", ""))
    return {"dataset": trained["dataset"], "skipped": True, "reason": trained.get("reason", ""),
            "model_version": trained["model_version"]}


def run_all(dataset: str, settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Every stage in order, without Airflow (``mmr run``). Like the DAG, it evaluates and promotes the version its
    own training registered (nothing, when ``train.when`` kept the champion), and embeds and publishes the champion it
    resolved once, whatever else runs meanwhile."""
    settings = settings or get_settings()
    results = {verb: run_stage(verb, dataset, settings) for verb in ("validate", "clean", "augment", "train")}
    version = str(results["train"]["model_version"])
    for verb in MODEL_STEPS:
        results[verb] = passed_over(verb, results["train"]) or run_stage(verb, dataset, settings, version=version)
    from mmretrieval.handoff import embed_start

    started = embed_start(dataset, settings)
    pinned = started.pinned
    for verb in ("embed", "publish"):
        results[verb] = run_stage(verb, dataset, settings, pinned=pinned)
    if settings.params.cache.max_size:
        results["cache"] = prune_caches(settings)
    return results


def prune_caches(settings: Settings) -> dict[str, Any]:
    """Prune ``var/cache`` to ``cache.max_size`` (least recently used entries first:
    :func:`~mmretrieval.core.cache_admin.prune`); returns its result. ``mmr run`` calls it after its stages when
    ``cache.max_size`` is set."""
    from mmretrieval.core import cache_admin

    result = cache_admin.prune(settings.var_dir / "cache", cache_admin.parse_size(settings.params.cache.max_size))
    log.info("cache: pruned to %s: %s", settings.params.cache.max_size, "; ".join(cache_admin.describe_prune(result)))
    return result
