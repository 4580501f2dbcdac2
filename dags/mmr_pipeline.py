"""mmr_pipeline: raw -> validated -> clean -> augmented -> trained -> evaluated -> promoted -> embedded -> published.

Configuration only: each task calls one library stage (``mmretrieval.stages.run_stage``) and passes its small JSON
result on as XCom. Nothing heavy is imported when the scheduler parses this file.
Run one dataset: ``airflow dags test mmr_pipeline -c '{"dataset": "demo"}'`` (or ``mmr dag-test --dataset demo``).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, TaskGroup, dag, task

CLEAN_DATA = Asset(name="mmr_clean_data")
CHAMPION_MODEL = Asset(name="mmr_champion_model")
SERVING_COLLECTION = Asset(name="mmr_serving_collection")

# task group -> its stages in order, each with the Assets it updates. A failure stops everything downstream:
# a hard validation failure fails `prepare.validate` and training never starts.
GROUPS: dict[str, list[tuple[str, list[Asset]]]] = {
    "prepare": [("validate", []), ("clean", []), ("augment", [CLEAN_DATA])],
    "model": [("train", []), ("evaluate", []), ("promote", [CHAMPION_MODEL])],
    "serve": [("embed", []), ("publish", [SERVING_COLLECTION])],
}


def stage_task(verb: str, outlets: list[Asset]):  # noqa: ANN201 - returns an Airflow task factory
    @task(task_id=verb, outlets=outlets)
    def run(params: dict | None = None) -> dict:
        from mmretrieval.stages import run_stage

        return run_stage(verb, params["dataset"])

    return run


@dag(
    dag_id="mmr_pipeline",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # Milvus Lite allows one process per file: never two publishes at once
    tags=["mmretrieval"],
    params={"dataset": Param("demo", type="string", pattern="^[a-z][a-z0-9_]{0,47}$")},
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    doc_md=__doc__,
)
def mmr_pipeline() -> None:
    previous = None
    for group_id, stages in GROUPS.items():
        with TaskGroup(group_id):
            for verb, outlets in stages:
                current = stage_task(verb, outlets)()
                if previous is not None:
                    previous >> current
                previous = current


mmr_pipeline()
