"""When the ``train`` stage trains a new model: ``train.when`` (``always``, ``grown``, ``never``) and
``train.grown_by``.

Every training run records on its MLflow run what it was trained on: the clean data version (tag ``data_version``),
the number of clean items (param ``clean_items``), a fingerprint of the params that shape a model (tag
``params_fingerprint``) and one fingerprint per clean item (artifact ``data/items.parquet``: ``id``,
``fingerprint`` of its modality, file hash, caption, label and split). With ``train.when: grown`` a new data version
is compared with the champion's record: the items added or changed since (by id and fingerprint; removals do not
count) as a share of the champion's items must reach ``train.grown_by`` for a new model to be trained; below it, the
champion keeps serving and embeds the new items. :func:`decide` is the pure rule; :func:`should_train` reads the
champion's record and applies it.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.backends import tracking
from mmretrieval.core.cache import fingerprint

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.core.params import Params
    from mmretrieval.core.settings import Settings

ITEMS_ARTIFACT = "data/items.parquet"  # the per-item fingerprints on a training run
FINGERPRINTED = ("modality", "sha256", "text", "label", "split")  # what makes an item "changed" for a model
POLICY_KEYS = ("when", "grown_by")  # train params that decide *whether* to train, not *what* is trained


@dataclass(frozen=True)
class DataRecord:
    """What a model was trained on, or what the clean data is now: ``items`` maps id -> item fingerprint."""

    data_version: str
    params: str
    items: Mapping[str, str]


@dataclass(frozen=True)
class Champion:
    """The serving model version and its record (None: trained before records were kept)."""

    version: str
    run_id: str
    record: DataRecord | None


@dataclass(frozen=True)
class Change:
    """Items added, changed and removed since a record; ``base``: the record's item count."""

    added: int
    replaced: int
    removed: int
    base: int

    @property
    def growth(self) -> float:
        """(added + replaced) / base: the share of new or changed items (inf from an empty base)."""
        grown = self.added + self.replaced
        return grown / self.base if self.base else (float("inf") if grown else 0.0)


def item_fingerprints(clean: pd.DataFrame) -> dict[str, str]:
    """id -> 16 hex characters of the fields in :data:`FINGERPRINTED` of each row of a clean manifest."""
    columns = [clean[c].astype(str).tolist() for c in FINGERPRINTED]
    return {str(i): hashlib.sha256("\x1f".join(values).encode()).hexdigest()[:16]
            for i, *values in zip(clean["id"], *columns, strict=True)}


def params_fingerprint(params: Params) -> str:
    """16 hex characters of the params that shape a trained model (model, train without :data:`POLICY_KEYS`,
    augment, split, gate.metric): a model trained under other values is not the one these would train."""
    train = {k: v for k, v in params.train.model_dump().items() if k not in POLICY_KEYS}
    parts = {"model": params.model.model_dump(), "train": train, "augment": params.augment.model_dump(),
             "split": params.split.model_dump(), "gate.metric": params.gate.metric}
    return fingerprint(parts)[:16]


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> Change:
    """What changed from the item fingerprints ``before`` to ``after``."""
    added = sum(1 for i in after if i not in before)
    replaced = sum(1 for i, f in after.items() if i in before and before[i] != f)
    return Change(added, replaced, sum(1 for i in before if i not in after), len(before))


def decide(when: str, grown_by: float, champion: Champion | None, now: DataRecord, force: bool = False,
           rejected: str | None = None) -> tuple[bool, str]:
    """Whether to train a new model, and why: ``force``, ``when: always`` or no champion -> train; ``never`` ->
    keep the champion; ``grown`` -> keep it when ``rejected`` (a challenger version the gate rejected, trained on
    exactly this data version and params: training again would repeat it), else train when the champion has no
    record, was trained under other params, or the items added or changed since its record reach ``grown_by`` (a
    share of its items) and are not none."""
    if force:
        return True, "forced (mmr train --force)"
    if when == "always":
        return True, "train.when is always"
    if champion is None:
        return True, "no champion yet"
    v = champion.version
    if when == "never":
        return False, f"train.when is never: champion v{v} keeps serving"
    if rejected is not None:
        return False, (f"challenger v{rejected} was trained on data version {now.data_version[:12]} with these params "
                       f"and the gate rejected it: no new model, champion v{v} serves")
    record = champion.record
    if record is None:
        return True, f"champion v{v} has no record of the data it was trained on (trained before train.when)"
    if record.params != now.params:
        return True, f"the model, training, augmentation or split params changed since champion v{v} was trained"
    c = changes(record.items, now.items)
    since = (f"{c.added} new and {c.replaced} changed item(s) ({c.removed} removed) since champion v{v} was "
             f"trained on {c.base} items (data version {record.data_version[:12]})")
    if c.added + c.replaced == 0:
        return False, f"{since}: no new model, v{v} serves data version {now.data_version[:12]}"
    if c.growth >= grown_by:
        return True, f"{since}: {c.growth:.1%} >= train.grown_by {grown_by:.1%}"
    return False, f"{since}: {c.growth:.1%} < train.grown_by {grown_by:.1%}: no new model, v{v} embeds them"


def current_record(clean: pd.DataFrame, data_version: str, params: Params) -> DataRecord:
    """The record of the clean data now."""
    return DataRecord(data_version, params_fingerprint(params), item_fingerprints(clean))


def champion(settings: Settings, dataset: str) -> Champion | None:
    """The champion and the record its training run kept (None: no champion)."""
    import pandas as pd

    ref = tracking.get_alias(settings, dataset, tracking.CHAMPION)
    if ref is None:
        return None
    tags, params = tracking.run_data(settings, ref.run_id)
    if not tags.get("params_fingerprint") or "clean_items" not in params:
        return Champion(ref.version, ref.run_id, None)
    with tempfile.TemporaryDirectory() as tmp:
        local = tracking.run_file(settings, ref.run_id, ITEMS_ARTIFACT, Path(tmp))
        if local is None:
            return Champion(ref.version, ref.run_id, None)
        items = pd.read_parquet(local)
    record = DataRecord(tags.get("data_version", ""), tags["params_fingerprint"],
                        dict(zip(items["id"], items["fingerprint"], strict=True)))
    return Champion(ref.version, ref.run_id, record)


def should_train(settings: Settings, dataset: str, params: Params, now: DataRecord,
                 force: bool = False) -> tuple[bool, str, Champion | None]:
    """:func:`decide` on the dataset's champion (read from MLflow only when the policy needs it)."""
    p = params.train
    if force or p.when == "always":
        return True, decide(p.when, p.grown_by, None, now, force)[1], None
    serving = champion(settings, dataset)
    retrain, reason = decide(p.when, p.grown_by, serving, now, force, rejected_on(settings, dataset, now))
    return retrain, reason, serving


def rejected_on(settings: Settings, dataset: str, now: DataRecord) -> str | None:
    """The challenger version the gate rejected after training on exactly ``now``'s data version and params, if
    the latest challenger is one."""
    ref = tracking.get_alias(settings, dataset, tracking.CHALLENGER)
    if ref is None:
        return None
    tags, _ = tracking.run_data(settings, ref.run_id)
    same = tags.get("data_version") == now.data_version and tags.get("params_fingerprint") == now.params
    return ref.version if same and tags.get("gate.decision") == "reject" else None


def log_record(now: DataRecord, folder: Path) -> dict[str, Any]:
    """Write ``now``'s per-item fingerprints into ``folder`` as :data:`ITEMS_ARTIFACT`; returns the params and tags
    the training run records with it (``clean_items``, ``params_fingerprint``)."""
    import pandas as pd

    path = folder / ITEMS_ARTIFACT
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": list(now.items), "fingerprint": list(now.items.values())}).to_parquet(path, index=False)
    return {"path": path, "params": {"clean_items": len(now.items)}, "tags": {"params_fingerprint": now.params}}
