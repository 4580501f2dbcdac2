"""mmretrieval DAGs. Configuration only: each task calls one library function through ``plugins/mmr_airflow.py``;
nothing heavy is imported when the scheduler parses this file.

* ``mmr_pipeline``: the whole path in one run (``make demo`` and the integration test use it): prepare (validate ->
  clean -> augment) -> model (train -> evaluate -> rerank -> promote) -> serve (embed_plan -> embed_shard mapped
  over the pending shards -> embed -> publish_build -> publish_check -> publish, the alias swap). A failure stops
  everything after it: a hard validation failure never trains.
  Run: ``mmr dag-test --dataset demo`` or ``airflow dags test mmr_pipeline -c '{"dataset": "demo"}'``.
* The same stages as three DAGs chained by Assets, for scheduled operation: ``mmr_prepare`` updates
  ``mmr_clean_data``; ``mmr_model`` runs on it and updates ``mmr_champion_model``; ``mmr_serve`` runs on that and
  updates ``mmr_serving_collection``. Only these three emit the Assets (``mmr_pipeline`` emits none, so it never
  starts a second chain). Each event carries ``{"dataset": NAME}``; a run works on every dataset of the events it
  consumed (tasks mapped over them), so two datasets prepared back to back are both trained and served.

Every run pins its inputs: ``evaluate``, ``rerank`` and ``promote`` act on the model version their ``train``
registered; ``embed_plan`` resolves the champion once and every later serve task works on that model and data version (a
champion promoted meanwhile is served by the next run, never mixed into this one).

Datasets are given by the ``dataset`` param (``all``: every dataset in params.yaml). The DAGs are created unpaused
(``is_paused_upon_creation=False``, whatever ``dags_are_paused_at_creation`` says): none has a time schedule, so an
unpaused DAG runs only when triggered or when its Asset is updated, and on a fresh Airflow home the first triggered
``mmr_prepare`` runs the whole chain with no ``airflow dags unpause`` (an event sent to a paused DAG starts nothing).
A DAG someone paused stays paused. ``tests/integration/test_live_scheduler.py`` runs the chain under a scheduler.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, TaskGroup, dag, task
from mmr_airflow import MILVUS_WRITER_POOL, MmrHook, datasets_of, log_data_docs, run_library

CLEAN_DATA = Asset(name="mmr_clean_data")  # validated, cleaned, augmented data of a dataset
CHAMPION_MODEL = Asset(name="mmr_champion_model")  # the gate ran (promoted or kept the champion)
SERVING_COLLECTION = Asset(name="mmr_serving_collection")  # the serving alias points at a verified collection

DEFAULTS: dict[str, Any] = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "max_active_runs": 1,
    "is_paused_upon_creation": False,  # no time schedule: runs only when triggered or on its Asset (module doc)
    "tags": ["mmretrieval"],
    "params": {"dataset": Param("demo", type="string", pattern="^(all|[a-z][a-z0-9_]{0,47})$")},
    "default_args": {"retries": 2, "retry_delay": timedelta(seconds=30), "execution_timeout": timedelta(hours=6)},
}


def stage(verb: str, dataset: str, **inputs: Any) -> dict:
    from mmretrieval.runner import run_stage

    return run_library(run_stage, verb, dataset, MmrHook().get_settings(), **inputs)


def emit(context: dict[str, Any], outlets: list[Asset], dataset: str) -> None:
    for asset in outlets:
        context["outlet_events"][asset].extra = {"dataset": dataset}


def prepare_tasks(outlets: list[Asset]) -> Any:
    @task
    def datasets(**context: Any) -> list[str]:
        return datasets_of(context)

    @task
    def validate(dataset: str) -> str:
        try:
            stage("validate", dataset)
        finally:  # the page is written for failed validations too
            log_data_docs(MmrHook().get_settings(), dataset)
        return dataset

    @task
    def clean(dataset: str) -> str:
        stage("clean", dataset)
        return dataset

    @task(outlets=outlets)
    def augment(dataset: str, **context: Any) -> str:
        stage("augment", dataset)
        emit(context, outlets, dataset)
        return dataset

    return augment.expand(dataset=clean.expand(dataset=validate.expand(dataset=datasets())))


def passed_over(verb: str, trained: dict) -> dict | None:
    from mmretrieval.runner import passed_over

    return passed_over(verb, trained)


def model_tasks(datasets: Any, outlets: list[Asset]) -> Any:
    """train -> evaluate -> rerank -> promote. When train keeps the champion (``train.when``), the three after it
    pass its result on without running (their logs say why) and promote still emits the champion's Asset, so the
    champion embeds and publishes the new data version."""

    @task
    def train(dataset: str) -> dict:
        return stage("train", dataset)

    @task
    def evaluate(trained: dict) -> dict:
        skipped = passed_over("evaluate", trained)
        return skipped or stage("evaluate", trained["dataset"], version=trained["model_version"])

    @task
    def rerank(evaluated: dict) -> dict:  # the version's cross-attention re-ranker, gated (rerank.enabled: auto)
        if not passed_over("rerank", evaluated):
            stage("rerank", evaluated["dataset"], version=evaluated["model_version"])
        return evaluated

    @task(outlets=outlets)
    def promote(evaluated: dict, **context: Any) -> str:
        if not passed_over("promote", evaluated):
            stage("promote", evaluated["dataset"], version=evaluated["model_version"])
        emit(context, outlets, evaluated["dataset"])
        return str(evaluated["dataset"])

    evaluated = evaluate.expand(trained=train.expand(dataset=datasets))
    return promote.expand(evaluated=rerank.expand(evaluated=evaluated))


def serve_tasks(datasets: Any, outlets: list[Asset]) -> None:
    """embed (plan -> one mapped task per pending shard of every dataset -> finish) -> publish (build -> check ->
    swap). A failed check fails the run before the swap: the serving alias stays where it was."""

    @task
    def embed_plan(dataset: str) -> dict:
        from mmretrieval.stages.embed import start

        return {"dataset": dataset, **run_library(start, dataset, MmrHook().get_settings()).to_json()}

    @task
    def shard_work(plans: list[dict]) -> list[dict]:
        return [plan | {"shard": k} for plan in plans for k in plan["shards"]]

    @task(max_active_tis_per_dagrun=4)
    def embed_shard(work: dict) -> dict:
        from mmretrieval.core.contracts import Pinned
        from mmretrieval.stages.embed import run_shard

        return run_library(run_shard, work["dataset"], work["shard"], MmrHook().get_settings(), Pinned.of(work))

    @task(task_id="embed", trigger_rule="none_failed")  # no pending shard skips embed_shard, not this one
    def embed_finish(plan: dict) -> dict:
        from mmretrieval.core.contracts import Pinned

        return stage("embed", plan["dataset"], pinned=Pinned.of(plan))  # completeness check, then into place

    @task(pool=MILVUS_WRITER_POOL)
    def publish_build(plan: dict) -> dict:
        from mmretrieval.core.contracts import Pinned
        from mmretrieval.stages.publish import build

        return run_library(build, plan["dataset"], MmrHook().get_settings(), Pinned.of(plan))

    @task(pool=MILVUS_WRITER_POOL)
    def publish_check(plan: dict) -> dict:
        from mmretrieval.core.contracts import Pinned
        from mmretrieval.stages.publish import check

        return run_library(check, plan["dataset"], MmrHook().get_settings(), Pinned.of(plan))

    @task(task_id="publish", pool=MILVUS_WRITER_POOL, outlets=outlets)
    def publish_swap(plan: dict, **context: Any) -> dict:
        from mmretrieval.core.contracts import Pinned

        result = stage("publish", plan["dataset"], pinned=Pinned.of(plan))
        emit(context, outlets, plan["dataset"])
        return result

    plans = embed_plan.expand(dataset=datasets)
    shards = embed_shard.expand(work=shard_work(plans))
    finished = embed_finish.expand(plan=plans)
    shards >> finished
    built = publish_build.expand(plan=plans)
    checked = publish_check.expand(plan=plans)
    finished >> built >> checked >> publish_swap.expand(plan=plans)


@dag(dag_id="mmr_pipeline", schedule=None, doc_md=__doc__, **DEFAULTS)
def mmr_pipeline() -> None:
    with TaskGroup("prepare"):
        prepared = prepare_tasks([])
    with TaskGroup("model"):
        modelled = model_tasks(prepared, [])
    with TaskGroup("serve"):
        serve_tasks(modelled, [])


@dag(dag_id="mmr_prepare", schedule=None, doc_md=__doc__, **DEFAULTS)
def mmr_prepare() -> None:
    prepare_tasks([CLEAN_DATA])


@dag(dag_id="mmr_model", schedule=[CLEAN_DATA], doc_md=__doc__, **DEFAULTS)
def mmr_model() -> None:
    @task
    def datasets(**context: Any) -> list[str]:
        return datasets_of(context)

    model_tasks(datasets(), [CHAMPION_MODEL])


@dag(dag_id="mmr_serve", schedule=[CHAMPION_MODEL], doc_md=__doc__, **DEFAULTS)
def mmr_serve() -> None:
    @task
    def datasets(**context: Any) -> list[str]:
        return datasets_of(context)

    serve_tasks(datasets(), [SERVING_COLLECTION])


mmr_pipeline()
mmr_prepare()
mmr_model()
mmr_serve()
