"""One path layout: every file a stage reads or writes for a dataset, named in one place.

Stages find each other's outputs here, never by importing another stage. The tree (``data/`` is DVC-tracked,
``var/`` is local state)::

    data/raw/<ds>/                     ingested manifest.csv + media (mmr ingest)
    data/validated/<ds>/               rows.parquet, report.json, data_docs.html          (validate)
    data/clean/<ds>/                   manifest.parquet, quarantine.parquet, duplicates.parquet, report.json,
                                       media/...                                          (clean)
    data/augmented/<ds>/               manifest.parquet (train rows), policy.json         (augment)
    data/reports/<ds>/                 evaluate.json/.html, evaluations/v<N>.json, rerank.json,
                                       stages/<verb>.json (every stage's result)          (evaluate, rerank, ...)
    data/embeddings/<ds>/v<N>/         part-*.parquet, embed.json, regions/ (+ v<N>.partial while embedding)
    var/checkpoints/<ds>/<run>/        training checkpoints (train)
    var/promotions/<ds>.jsonl          every gate decision and alias move (promote, rerank)
    var/locks/<ds>.<name>.lock         per-dataset stage locks (train, gate, rerank)
    var/store/<unit>.commit.json       with MMR_DATA_URL: the commit of the shared store a local copy holds
                                       (mmretrieval.backends.store; data/ is then a cache of the store)
    var/model-cache/<model>/           downloaded model versions
    var/cache/<kind>/<key[:2]>/<key>   per-item results addressed by content (mmretrieval.core.cache), shared by
                                       every dataset and data version on this machine
    var/cache/file-digests.sqlite      files' digests remembered by identity and times (mmretrieval.core.digests)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmretrieval.core.schema import check_dataset_name

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.parquet"
REPORT = "report.json"
SUMMARY = "embed.json"


@dataclass(frozen=True)
class Layout:
    """The paths of one dataset under a workspace's ``data/`` and ``var/`` folders (nothing is created here)."""

    data_dir: Path
    var_dir: Path
    dataset: str

    def __post_init__(self) -> None:
        check_dataset_name(self.dataset)

    # --- data/: one folder per stage ------------------------------------------------------------------------------
    def stage(self, stage: str) -> Path:
        """``data/<stage>/<dataset>``: the output folder of a stage (raw, validated, clean, augmented, reports,
        embeddings)."""
        return self.data_dir / stage / self.dataset

    @property
    def raw(self) -> Path:
        return self.stage("raw")

    @property
    def validated(self) -> Path:
        return self.stage("validated")

    @property
    def validated_rows(self) -> Path:
        return self.validated / "rows.parquet"

    @property
    def validation_report(self) -> Path:
        return self.validated / REPORT

    @property
    def data_docs(self) -> Path:
        return self.validated / "data_docs.html"

    @property
    def clean(self) -> Path:
        """The clean folder; the ``media`` column of the clean manifest is relative to it."""
        return self.stage("clean")

    @property
    def clean_manifest(self) -> Path:
        return self.clean / MANIFEST

    @property
    def clean_report(self) -> Path:
        return self.clean / REPORT

    @property
    def quarantine(self) -> Path:
        return self.clean / "quarantine.parquet"

    @property
    def duplicates(self) -> Path:
        return self.clean / "duplicates.parquet"

    @property
    def augmented(self) -> Path:
        return self.stage("augmented")

    @property
    def training_manifest(self) -> Path:
        return self.augmented / MANIFEST

    @property
    def augmentation_policy(self) -> Path:
        return self.augmented / "policy.json"

    @property
    def reports(self) -> Path:
        return self.stage("reports")

    def stage_result(self, verb: str) -> Path:
        """``reports/<ds>/stages/<verb>.json``: the last result of a stage verb (audit trail, a DVC out)."""
        return self.reports / "stages" / f"{verb}.json"

    @property
    def evaluation_latest(self) -> Path:
        return self.reports / "evaluate.json"

    def evaluation(self, version: str) -> Path:
        """The evaluation of one model version (``evaluate.json`` holds the latest one)."""
        return self.reports / "evaluations" / f"v{version}.json"

    @property
    def rerank_report(self) -> Path:
        return self.reports / "rerank.json"

    @property
    def embeddings_root(self) -> Path:
        return self.stage("embeddings")

    def embeddings(self, model_version: str) -> Path:
        """``embeddings/<ds>/v<N>``: the finished embeddings of model version N (``v<N>.partial`` while embedding)."""
        return self.embeddings_root / f"v{model_version}"

    def embedding_summary(self, model_version: str) -> Path:
        """``embed.json`` of finished embeddings: written last, so its presence means complete."""
        return self.embeddings(model_version) / SUMMARY

    # --- var/: local state ----------------------------------------------------------------------------------------
    def checkpoints(self, run: str) -> Path:
        return self.var_dir / "checkpoints" / self.dataset / run

    def lock(self, name: str) -> Path:
        """``var/locks/<ds>.<name>.lock``: the file lock a stage of this dataset holds
        (:mod:`mmretrieval.backends.locks`)."""
        return self.var_dir / "locks" / f"{self.dataset}.{name}.lock"

    @property
    def item_cache(self) -> Path:
        """``var/cache/``: the root of the per-item caches addressed by content (:class:`~.cache.ItemCache`;
        shared by all datasets, since an entry is keyed by bytes and settings, not by dataset)."""
        return self.var_dir / "cache"

    @property
    def promotions_log(self) -> Path:
        """One JSON line per gate decision and alias move of the dataset."""
        return self.var_dir / "promotions" / f"{self.dataset}.jsonl"


@dataclass(frozen=True)
class CleanData:
    """The clean manifest of a dataset with its data version: what every stage after ``clean`` starts from.

    ``frame`` has the columns of :mod:`mmretrieval.core.schema` plus ``media`` (relative to ``root``) and ``split``.
    """

    frame: pd.DataFrame
    data_version: str
    root: Path

    def media_path(self, media: str) -> Path:
        return self.root / media


def read_clean(layout: Layout) -> CleanData:
    """Read the clean manifest and its data version; raises :class:`~mmretrieval.core.errors.DatasetNotFoundError`
    (via :func:`mmretrieval.core.io.read_parquet`) when ``clean`` has not run."""
    from mmretrieval.core.io import read_json, read_parquet

    frame = read_parquet(layout.clean_manifest, f"clean manifest of {layout.dataset!r}")
    version = str(read_json(layout.clean_report, f"clean report of {layout.dataset!r}")["data_version"])
    return CleanData(frame, version, layout.clean)


def read_data_version(report: Path) -> str:
    """The ``data_version`` recorded in a stage report (validate or clean)."""
    from mmretrieval.core.io import read_json

    return str(read_json(report, f"report {report}")["data_version"])


NOT_COPIED = "not_copied.json"
