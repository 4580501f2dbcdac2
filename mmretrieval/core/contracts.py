"""What stages hand to each other within one run (typed, JSON-able through Airflow XCom)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Pinned:
    """The inputs the first task of a serve run resolved (the champion's model version, the clean data version).

    Every later task of that run receives them and works on exactly these: a champion promoted meanwhile never gets
    mixed into the run's shards or collection, and clean data rewritten meanwhile fails the run loudly.
    """

    model_version: str
    data_version: str

    def as_dict(self) -> dict[str, str]:
        return {"model_version": self.model_version, "data_version": self.data_version}

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Pinned | None:
        return None if not raw else cls(str(raw["model_version"]), str(raw["data_version"]))


@dataclass(frozen=True)
class StageResult(Mapping[str, Any]):
    """Base of every stage's result: a frozen record whose JSON form (:meth:`to_json`, key order kept) is what
    ``reports/<ds>/stages/<verb>.json``, the CLI and Airflow XCom carry. It reads like a mapping of that JSON, so
    ``result["model_version"]`` and ``result.model_version`` agree. Fields named in ``OPTIONAL`` are left out of the
    JSON while None."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if not (k in self.OPTIONAL and v is None)}

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


@dataclass(frozen=True)
class ValidateResult(StageResult):
    """``validate``: row counts of the raw manifest, quarantine reasons, the report's and data docs page's paths."""

    dataset: str
    data_version: str
    rows: int
    valid: int
    quarantine: int
    reasons: dict[str, int]
    report: str
    data_docs: str = ""


@dataclass(frozen=True)
class CleanResult(StageResult):
    """``clean``: input = clean + quarantined + merged duplicates; the clean manifest's path."""

    dataset: str
    data_version: str
    input: int
    clean: int
    quarantined: int
    merged_duplicates: int
    split_leakage_resolved: int
    reasons: dict[str, int]
    manifest: str


@dataclass(frozen=True)
class AugmentResult(StageResult):
    """``augment``: the training rows and the augmentation policy's path."""

    dataset: str
    data_version: str
    train_rows: int
    policy: str


@dataclass(frozen=True)
class TrainResult(StageResult):
    """``train``: the registered model version (what evaluate, rerank and promote of the same run act on), or, when
    ``train.when`` kept the champion (``skipped`` true), the champion that goes on serving (``model_version``,
    ``run_id``: its run; ``champion_data_version``: the data it was trained on). ``reason`` says why, either way;
    after a skip the run's evaluate, rerank and promote do nothing and the champion embeds the new data version."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"best_epoch", "epochs_run", "metrics", "champion_data_version"})

    dataset: str
    data_version: str
    run_id: str
    model: str
    model_version: str
    best_epoch: int | None = None
    epochs_run: int | None = None
    metrics: dict[str, float] | None = None
    seconds: float = 0.0
    skipped: bool = False
    reason: str = ""
    champion_data_version: str | None = None


@dataclass(frozen=True)
class EvaluateResult(StageResult):
    """``evaluate``: the scored challenger version (= ``model_version``), the champion it was compared with."""

    dataset: str
    challenger: str
    model_version: str
    champion: str | None
    metrics: dict[str, float]
    report: str


@dataclass(frozen=True)
class RerankResult(StageResult):
    """``rerank``: the version whose re-ranker was trained and whether it passed its gate (with the gate's reasons,
    the re-ranker's training time, the hit-rate/recall metrics of dual vs re-ranked, the query latency and the
    report's path), or only why the stage was skipped (``skipped``)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"model_version", "skipped", "passed", "reasons", "train_seconds",
                                                    "metrics", "latency", "seconds", "report"})

    dataset: str
    model_version: str | None = None
    skipped: str | None = None
    passed: bool | None = None
    reasons: list[str] | None = None
    train_seconds: float | None = None
    metrics: dict[str, float] | None = None
    latency: dict[str, dict[str, float]] | None = None
    seconds: float | None = None
    report: str | None = None


@dataclass(frozen=True)
class PromoteResult(StageResult):
    """``promote``: the gate's decision on ``version`` and the champion after it."""

    dataset: str
    promoted: bool
    version: str
    reasons: list[str]
    champion: str | None


@dataclass(frozen=True)
class EmbedStart(StageResult):
    """The first serve task: the champion resolved once and pinned with the data version, and the shards still to
    embed (empty when the embeddings are complete)."""

    model_version: str
    data_version: str
    shards: list[int]

    @property
    def pinned(self) -> Pinned:
        return Pinned(self.model_version, self.data_version)


@dataclass(frozen=True)
class PublishResult(StageResult):
    """``publish``: the collection behind the alias, whether it changed, the checks it passed."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"model", "model_version", "data_version", "checks", "dropped",
                                                    "seconds"})  # a rerun that changed nothing says only that

    dataset: str
    alias: str
    collection: str
    changed: bool
    previous: str | None = None
    model: str | None = None
    model_version: str | None = None
    data_version: str | None = None
    checks: dict[str, Any] | None = None
    dropped: list[str] | None = None
    seconds: float | None = None
