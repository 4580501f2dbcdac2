"""mmretrieval DAGs. Configuration only: each task calls one library stage and passes its small JSON result on as
XCom; nothing heavy is imported when the scheduler parses this file.

* ``mmr_pipeline``: the whole path for one dataset in one run (``make demo`` and the integration test use it):
  prepare (validate -> clean -> augment) -> model (train -> evaluate -> rerank -> promote) -> serve (embed_plan ->
  embed_shard mapped over the pending shards -> embed -> publish_build -> publish_check -> publish, the alias swap).
  A failure stops everything after it: a hard validation failure never trains.
  Run: ``mmr dag-test --dataset demo`` or ``airflow dags test mmr_pipeline -c '{"dataset": "demo"}'``.
* The same stages as three DAGs chained by Assets, for scheduled operation: ``mmr_prepare`` updates
  ``mmr_clean_data``; ``mmr_model`` runs on it and updates ``mmr_champion_model``; ``mmr_serve`` runs on that and
  updates ``mmr_serving_collection``. Each Asset event carries ``{"dataset": NAME}``, so the downstream DAG works
  on the same dataset.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import Asset, Param, TaskGroup, dag, task

CLEAN_DATA = Asset(name="mmr_clean_data")  # validated, cleaned, augmented data of a dataset
CHAMPION_MODEL = Asset(name="mmr_champion_model")  # the gate ran (promoted or kept the champion)
SERVING_COLLECTION = Asset(name="mmr_serving_collection")  # the serving alias points at a verified collection

DEFAULTS: dict[str, Any] = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "max_active_runs": 1,  # Milvus Lite allows one process per file: never two publishes at once
    "tags": ["mmretrieval"],
    "params": {"dataset": Param("demo", type="string", pattern="^[a-z][a-z0-9_]{0,47}$")},
    "default_args": {"retries": 2, "retry_delay": timedelta(seconds=30)},
}


def dataset_of(context: dict[str, Any]) -> str:
    """The dataset of this run: from the Asset event that triggered it, else the run's ``dataset`` param."""
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in reversed(list(events)):
            name = (getattr(event, "extra", None) or {}).get("dataset")
            if name:
                return str(name)
    return str(context["params"]["dataset"])


def stage_task(verb: str, outlets: list[Asset]):  # noqa: ANN201 - returns an Airflow task factory
    """A task running one library stage; its Asset events carry the dataset name to the DAGs scheduled on them."""

    @task(task_id=verb, outlets=outlets)
    def run(**context: Any) -> dict:
        from mmretrieval.stages import run_stage

        dataset = dataset_of(context)
        result = run_stage(verb, dataset)
        for asset in outlets:
            context["outlet_events"][asset].extra = {"dataset": dataset}
        return result

    return run


def chain_stages(stages: list[tuple[str, list[Asset]]], previous: Any = None) -> Any:
    """Instantiate the stages in order, each downstream of the one before; returns the last task."""
    for verb, outlets in stages:
        current = stage_task(verb, outlets)()
        if previous is not None:
            previous >> current
        previous = current
    return previous


PREPARE = [("validate", []), ("clean", []), ("augment", [CLEAN_DATA])]
MODEL = [("train", []), ("evaluate", []), ("rerank", []), ("promote", [CHAMPION_MODEL])]


def serve_tasks(previous: Any = None) -> Any:
    """embed (plan -> one mapped task per pending shard -> finish) -> publish (build -> check -> swap).

    A failed check fails the run before the swap: the serving alias stays where it was.
    """

    @task
    def embed_plan(**context: Any) -> list[int]:
        from mmretrieval.embed import pending

        return pending(dataset_of(context))

    @task(max_active_tis_per_dagrun=4)
    def embed_shard(shard: int, **context: Any) -> dict:
        from mmretrieval.embed import run_shard

        return run_shard(dataset_of(context), shard)

    @task(task_id="embed", trigger_rule="none_failed")  # no pending shard skips the mapped task, not this one
    def embed_finish(**context: Any) -> dict:
        from mmretrieval.stages import run_stage

        return run_stage("embed", dataset_of(context))  # checks completeness, moves the shards into place

    @task
    def publish_build(**context: Any) -> dict:
        from mmretrieval.publish import build

        return build(dataset_of(context))

    @task
    def publish_check(**context: Any) -> dict:
        from mmretrieval.publish import check

        return check(dataset_of(context))

    plan = embed_plan()
    if previous is not None:
        previous >> plan
    shards = embed_shard.expand(shard=plan)
    finished = embed_finish()
    shards >> finished
    built = publish_build()
    checked = publish_check()
    finished >> built >> checked
    return chain_stages([("publish", [SERVING_COLLECTION])], checked)  # the swap, once checked


@dag(dag_id="mmr_pipeline", schedule=None, doc_md=__doc__, **DEFAULTS)
def mmr_pipeline() -> None:
    last = None
    for group_id, stages in (("prepare", PREPARE), ("model", MODEL)):
        with TaskGroup(group_id):
            last = chain_stages(stages, last)
    with TaskGroup("serve"):
        serve_tasks(last)


@dag(dag_id="mmr_prepare", schedule=None, doc_md=__doc__, **DEFAULTS)
def mmr_prepare() -> None:
    chain_stages(PREPARE)


@dag(dag_id="mmr_model", schedule=[CLEAN_DATA], doc_md=__doc__, **DEFAULTS)
def mmr_model() -> None:
    chain_stages(MODEL)


@dag(dag_id="mmr_serve", schedule=[CHAMPION_MODEL], doc_md=__doc__, **DEFAULTS)
def mmr_serve() -> None:
    serve_tasks()


mmr_pipeline()
mmr_prepare()
mmr_model()
mmr_serve()
