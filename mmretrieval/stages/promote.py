"""Stage ``promote``: the champion/challenger gate, and rollback.

The challenger becomes ``champion`` when its test metric reaches the floor and is no worse than the champion's (on
the same test split) by more than the tolerance; the old champion becomes ``previous``. Every decision is written as
tags on the challenger's MLflow run and appended to ``var/promotions/<dataset>.jsonl`` (MLflow keeps no alias
history).
"""

from __future__ import annotations

import logging
from typing import Any

from mmretrieval.backends import tracking
from mmretrieval.backends.locks import per_dataset
from mmretrieval.core.contracts import PromoteResult
from mmretrieval.core.errors import ModelNotFoundError, TrainingError
from mmretrieval.core.io import append_promotion, read_json
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.evaluation.gate import Decision, decide

log = logging.getLogger(__name__)


@per_dataset("gate")  # locks.py: a second run of this dataset waits
def run(dataset: str, settings: Settings | None = None, version: str | None = None) -> PromoteResult:
    """Decide on the evaluated challenger, or on exactly model ``version`` (the one this run trained and evaluated):
    its own evaluation is read, so two runs of one dataset never judge each other's model."""
    settings = settings or get_settings()
    gate = settings.params_for(dataset).gate
    layout = settings.layout(dataset)
    if version is not None:
        result = read_json(layout.evaluation(version), f"evaluation of {dataset!r} model v{version}")
    else:
        result = read_json(layout.evaluation_latest, f"evaluation of {dataset!r}")
        current = tracking.require_alias(settings, dataset, tracking.CHALLENGER)
        if current.version != result[tracking.CHALLENGER]["version"]:
            raise TrainingError(f"evaluate.json scored v{result[tracking.CHALLENGER]['version']} but the challenger "
                                f"is now v{current.version}: run `mmr evaluate --dataset {dataset}` again")
    challenger = result[tracking.CHALLENGER]
    champion = result.get(tracking.CHAMPION)
    now = tracking.get_alias(settings, dataset, tracking.CHAMPION)
    then, current = (champion["version"] if champion else None), (now.version if now else None)
    if current != then:
        decision = Decision(False, [f"the champion changed since v{challenger['version']} was evaluated (then "
                                    f"v{then}, now v{current}): evaluate v{challenger['version']} again to compare "
                                    "it with the new champion"])
        promoted = False
    elif champion and champion["version"] == challenger["version"]:
        decision = Decision(False, [f"v{challenger['version']} is already the champion"])
        promoted = False
    else:
        decision = decide(gate, challenger["metrics"], champion["metrics"] if champion else None)
        promoted = decision.promote
    if promoted:
        if champion:
            tracking.set_alias(settings, dataset, tracking.PREVIOUS, champion["version"])
        tracking.set_alias(settings, dataset, tracking.CHAMPION, challenger["version"])
    entry = append_promotion(layout, {"action": "promote" if promoted else "reject",
                                      "challenger": challenger["version"],
                                      "champion_before": champion["version"] if champion else None,
                                      "reasons": decision.reasons})
    tracking.log_run(settings, challenger["run_id"], tags={"gate.decision": entry["action"],
                                                           "gate.reasons": " | ".join(decision.reasons)})
    registered = tracking.get_version(settings, settings.registered_model(dataset), challenger["version"])
    tracking.describe_version(settings, registered, gate_decision=entry["action"],
                              gate_reasons=" | ".join(decision.reasons))
    log.info("promote %s: %s v%s (%s)", dataset, entry["action"], challenger["version"], "; ".join(decision.reasons))
    return PromoteResult(dataset, promoted, challenger["version"], decision.reasons,
                         challenger["version"] if promoted else (champion or {}).get("version"))


@per_dataset("gate")  # locks.py: a second run of this dataset waits
def rollback(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    """Point ``champion`` back at ``previous`` (and ``previous`` at the demoted version)."""
    settings = settings or get_settings()
    champion = tracking.require_alias(settings, dataset, tracking.CHAMPION)
    previous = tracking.get_alias(settings, dataset, tracking.PREVIOUS)
    if previous is None:
        raise ModelNotFoundError(f"{settings.registered_model(dataset)!r} has no 'previous' version to roll back to")
    tracking.set_alias(settings, dataset, tracking.CHAMPION, previous.version)
    tracking.set_alias(settings, dataset, tracking.PREVIOUS, champion.version)
    return append_promotion(settings.layout(dataset), {"action": "rollback", "champion_before": champion.version,
                                                       "champion": previous.version})
