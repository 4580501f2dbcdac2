"""Two processes running the model stages of one dataset at once: the per-dataset locks
(mmretrieval/backends/locks.py) make the second wait, so each version gets its own training run, its own evaluation
and one gate decision against the champion as it really is
(real MLflow, CPU, separate OS processes as Airflow tasks are)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.core.settings import get_settings

pytestmark = pytest.mark.integration
STAGE = ("import json, logging, sys\n"
         "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
         "from mmretrieval.runner import run_stage\n"
         "print(json.dumps(run_stage(sys.argv[1], 'tiny', **json.loads(sys.argv[2]))))\n")


def concurrently(workspace: Path, *calls: tuple[str, dict]) -> list[tuple[dict, str]]:
    """Start one process per ``(verb, inputs)`` at once; their results and logs, in the order given."""
    procs = [subprocess.Popen([sys.executable, "-c", STAGE, verb, json.dumps(inputs)], cwd=workspace, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for verb, inputs in calls]
    done = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, done, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [(json.loads(out.strip().splitlines()[-1]), err) for out, err in done]


def waited(logs: list[str]) -> int:
    return sum("another run holds" in log for log in logs)


def test_two_processes_training_one_dataset_take_turns_and_each_version_gets_its_own_gate_decision(
        prepared: Path) -> None:
    settings = get_settings(prepared)
    tracking.client(settings).search_experiments()  # the MLflow store exists (creating it is not what is tested)
    trained = concurrently(prepared, ("train", {}), ("train", {}))
    versions = sorted(result["model_version"] for result, _ in trained)
    assert versions == ["1", "2"]
    refs = {v: tracking.get_version(settings, settings.registered_model("tiny"), v) for v in versions}
    runs = sorted((tracking.client(settings).get_run(ref.run_id).info for ref in refs.values()),
                  key=lambda info: info.start_time)
    assert runs[0].run_id != runs[1].run_id  # the second did not resume the first one's checkpoint and run
    assert runs[0].end_time <= runs[1].start_time  # one after the other: the checkpoint folder was never shared
    assert waited([log for _, log in trained]) == 1

    evaluated = concurrently(prepared, *(("evaluate", {"version": v}) for v in versions))
    assert [r["challenger"] for r, _ in evaluated] == versions and waited([log for _, log in evaluated]) == 1
    for (result, _), v in zip(evaluated, versions, strict=True):  # each version's run has its own test metrics
        metrics = tracking.client(settings).get_run(refs[v].run_id).data.metrics
        assert metrics["test_t2i_recall_at_10"] == pytest.approx(result["metrics"]["t2i_recall@10"], abs=1e-4)

    decided = [r for r, _ in concurrently(prepared, *(("promote", {"version": v}) for v in versions))]
    assert sorted(d["promoted"] for d in decided) == [False, True]  # both passed the gate against no champion...
    winner = next(d["version"] for d in decided if d["promoted"])
    loser = next(d for d in decided if not d["promoted"])
    assert "champion changed" in loser["reasons"][0]  # ...but the second saw the first one's promotion
    assert tracking.require_alias(settings, "tiny", tracking.CHAMPION).version == winner
    assert tracking.get_alias(settings, "tiny", tracking.PREVIOUS) is None
    log = [json.loads(line) for line in (prepared / "var/promotions/tiny.jsonl").read_text().splitlines()]
    assert sorted(e["action"] for e in log) == ["promote", "reject"]
