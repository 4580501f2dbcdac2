"""Stage ``publish``: a new versioned Milvus collection, checked, then the serving alias swapped to it.

Collection name: ``<alias>__m<model_version>__d<data_version[:12]>``. Three steps (the serve DAG runs them as
three tasks; :func:`run` runs all):

1. :func:`build` creates the collection (state ``building``), inserts, indexes and loads it; the vectors of the
   modalities in ``index.centre`` are centred on their corpus mean first
   (:mod:`mmretrieval.evaluation.centring`), and the
   means are stored on the collection for the queries, with the model version's score calibration
   (:mod:`mmretrieval.evaluation.calibration`: the hits' ``confidence`` and ``no_good_match``);
2. :func:`check` verifies it (row count, ANN recall@10 against exact search on a sample, a smoke query per
   modality) and sets state ``verified``;
3. :func:`swap` points the serving alias at it and drops collections beyond ``index.keep_collections`` (never the
   serving one or its rollback target).

A crash at any step leaves the alias on the old collection; the next run drops a half-built collection and starts
again (a verified one is reused); a rerun with unchanged inputs changes nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.backends.index import MilvusIndex, add_keywords
from mmretrieval.backends.regions import REGIONS
from mmretrieval.core.contracts import Pinned, PublishResult
from mmretrieval.core.errors import (
    AliasNotFoundError,
    CalibrationError,
    DataChangedError,
    IndexStoreError,
    PinnedInputChanged,
    PublishError,
)
from mmretrieval.core.io import read_json
from mmretrieval.core.layout import read_clean
from mmretrieval.core.params import IndexParams
from mmretrieval.core.progress import progress
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.evaluation import calibration, centring

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
SAMPLE_QUERIES = 200
STATE, VERIFIED, BUILDING = "mmr.state", "verified", "building"


def collection_name(alias: str, model_version: str, data_version: str) -> str:
    return f"{alias}__m{model_version}__d{data_version[:12]}"


def load_embeddings(settings: Settings, t: Target) -> tuple[pd.DataFrame, np.ndarray]:
    """The finished embedding shards of the target, and their vectors; the dimension checked before any insert."""
    import pandas as pd

    folder = settings.layout(t.dataset).embeddings(t.ref.version)
    check_shards(folder, t.summary)
    frame = pd.concat([pd.read_parquet(folder / s) for s in t.summary["shards"]], ignore_index=True)
    vectors = np.stack(frame["vector"].to_numpy()).astype(np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != int(t.summary["dim"]) or len(frame) != int(t.summary["rows"]):
        raise PublishError(f"embeddings in {folder} hold {vectors.shape} vectors but their summary says "
                           f"{t.summary['rows']} x {t.summary['dim']}-d: embed again")
    return frame, vectors


def _steps(counts: Iterator[int]) -> Iterator[int]:
    """Cumulative row counts (what an insert yields) -> the rows each step added."""
    done = 0
    for count in counts:
        yield count - done
        done = count


def check_shards(folder: Path, summary: dict[str, Any]) -> None:
    """Check each embedding shard's bytes against the sha256 its summary (``embed.json``) recorded. Raises
    :class:`DataChangedError` naming a shard that changed or is gone; a summary written before checksums were
    recorded is taken as it is (logged)."""
    from mmretrieval.core.integrity import verify_file

    sums = summary.get("checksums")
    if not sums:
        log.warning("publish: %s records no shard checksums (embedded by an older version): not checked", folder)
        return
    for shard in summary["shards"]:
        try:
            verify_file(folder / shard, sums.get(shard, ""))
        except DataChangedError as e:
            raise DataChangedError(f"embedding shard {folder / shard} changed or is gone since embed recorded it: "
                                   "embed again") from e


def verify(ix: MilvusIndex, name: str, ids: list[str], modalities: list[str], vectors: np.ndarray,
           params: IndexParams) -> dict[str, Any]:
    """Raise :class:`PublishError` unless the collection holds exactly these vectors and answers well."""
    n = ix.count(name)
    if n != len(ids):
        raise PublishError(f"collection {name} holds {n} rows, expected {len(ids)}")
    rng = np.random.default_rng(0)
    sample = rng.choice(len(ids), size=min(SAMPLE_QUERIES, len(ids)), replace=False)
    k = min(10, len(ids))
    exact = np.argsort(-(vectors[sample] @ vectors.T), axis=1)[:, :k]
    hits = ix.search(name, vectors[sample], k, params, output_fields=["id"])
    found = [{h["id"] for h in row} for row in hits]
    recall = float(np.mean([len(f & {ids[j] for j in ex}) / k for f, ex in zip(found, exact, strict=True)]))
    if recall < params.min_recall:
        raise PublishError(f"ANN recall@{k} of {name} is {recall:.3f} < index.min_recall {params.min_recall}: "
                           f"raise index.search_params (now {params.search_params})")
    smoke = {}
    for modality in sorted(set(modalities)):
        j = modalities.index(modality)
        top = ix.search(name, vectors[j:j + 1], k, params, expr=f'modality == "{modality}"',
                        output_fields=["id"])[0]
        if not top or top[0]["score"] < 0.999 * float(vectors[j] @ vectors[j]):
            raise PublishError(f"smoke query for {modality} item {ids[j]!r} in {name} did not find it first: {top[:3]}")
        smoke[modality] = ids[j]
    return {"rows": n, f"ann_recall@{k}": round(recall, 4), "smoke": smoke}


@dataclass(frozen=True)
class Target:
    """The collection the champion's embeddings belong in, and what serves now."""

    dataset: str
    alias: str
    name: str
    ref: tracking.ModelRef
    summary: dict[str, Any]


def target(dataset: str, settings: Settings, pinned: Pinned | None = None) -> Target:
    """The champion's collection, or with ``pinned`` the collection of exactly that model and data version."""
    if pinned is None:
        ref = tracking.require_alias(settings, dataset, tracking.CHAMPION)
    else:
        ref = tracking.get_version(settings, settings.registered_model(dataset), pinned.model_version)
    summary = read_json(settings.layout(dataset).embedding_summary(ref.version),
                        f"embeddings of {dataset!r} with model v{ref.version}")
    if pinned is not None and summary["data_version"] != pinned.data_version:
        raise PinnedInputChanged(f"the embeddings of {dataset!r} with model v{ref.version} are of data version "
                                 f"{summary['data_version'][:12]}, this run pinned {pinned.data_version[:12]}")
    alias = settings.alias(dataset)
    return Target(dataset, alias, collection_name(alias, ref.version, summary["data_version"]), ref, summary)


class _Publication:
    """One publish of the champion's embeddings: the target, the open index, and the embeddings read at most once."""

    def __init__(self, dataset: str, settings: Settings, ix: MilvusIndex, pinned: Pinned | None = None) -> None:
        self.dataset, self.settings, self.ix = dataset, settings, ix
        self.t = target(dataset, settings, pinned)
        self.params = settings.params_for(dataset).index

    @functools.cached_property
    def embeddings(self) -> tuple[pd.DataFrame, np.ndarray]:
        return load_embeddings(self.settings, self.t)

    def build(self) -> dict[str, Any]:
        ix, t = self.ix, self.t
        serving = ix.resolve_alias(t.alias)
        if ix.exists(t.name):  # never dropped while serving: the serving one was verified before its swap
            props = ix.properties(t.name)
            if props.get(STATE) == VERIFIED and ix.dim(t.name) == int(t.summary["dim"]):
                if regions_missing(props, t.summary):  # the version's re-ranker passed its gate after publishing
                    self.attach_regions(props)
                log.info("publish %s: %s is built and verified (by this run's earlier steps or an earlier run)",
                         self.dataset, t.name)
                return {"collection": t.name, "built": False, "serving": serving}
            log.warning("publish %s: dropping half-built collection %s", self.dataset, t.name)
            ix.drop(t.name)
        emb, raw = self.embeddings
        centre = centring.fit(raw, list(emb["modality"]), self.params.centre, self.params.centre_min_items)
        vectors = centre.apply_rows(raw, list(emb["modality"]))
        if centre.means:
            log.info("publish %s: %s vectors centred on the corpus mean", self.dataset, centre.modalities)
        clean = read_clean(self.settings.layout(self.dataset)).frame
        meta = clean.set_index("id").loc[emb["id"]]
        rows = [{"id": i, "modality": m, "vector": v.tolist(), "text": txt, "path": path, "label": lab,
                 "metadata": _metadata(md, media), "model_version": t.ref.version,
                 "data_version": t.summary["data_version"]}
                for i, m, v, txt, path, lab, md, media in zip(
                    emb["id"], emb["modality"], vectors, meta["text"], meta["path"], meta["label"],
                    meta["metadata"], meta["media"], strict=True)]
        if "frame_times" in emb.columns:  # video: per-frame vectors ride along, so hits can say where they matched
            from mmretrieval.media.video import FRAMES_KEY, pack_frames

            for row, times, flat in zip(rows, emb["frame_times"], emb["frame_vectors"], strict=True):
                if isinstance(times, (list, np.ndarray)) and len(times):
                    row["metadata"][FRAMES_KEY] = pack_frames(times, flat, int(t.summary["dim"]))
        props = {STATE: BUILDING, "mmr.dataset": self.dataset, "mmr.model_name": t.ref.name,
                 "mmr.model_version": t.ref.version, "mmr.data_version": t.summary["data_version"],
                 "mmr.dim": str(t.summary["dim"]), "mmr.previous": serving or "",
                 centring.PROPERTY: centre.to_property()}
        if scores := calibration_of(self.settings, t.ref):  # a model evaluated before calibration existed has none
            props[calibration.PROPERTY] = scores
        if t.summary.get("regions"):  # the re-ranker's region store of these embeddings (mmretrieval.stages.rerank)
            props[REGIONS] = t.summary["regions"]["path"]
        ix.create(t.name, int(t.summary["dim"]), props)
        if ix.has_keywords(t.name):  # a Milvus with BM25: keyword and hybrid search (mmretrieval.serving.hybrid)
            add_keywords(rows, self.params.keyword_fields)
        try:
            for _ in progress(_steps(ix.insert(t.name, rows)), f"publish {self.dataset} insert", total=len(rows),
                              unit="rows", size=int):
                pass
        except IndexStoreError as e:  # a row the schema refuses: no half-built collection is left behind
            ix.drop(t.name)
            raise PublishError(f"publish {self.dataset}: {e}; the alias {t.alias!r} stays on {serving} "
                               "(validation checks these limits: validate the data again)") from e
        ix.build_index(t.name, self.params)
        ix.load(t.name)
        return {"collection": t.name, "built": True, "rows": len(rows), "serving": serving}

    def attach_regions(self, props: dict[str, Any]) -> None:
        """Give a verified collection the region store its embeddings gained (re-embedded after the version's
        re-ranker passed its gate): the store is checked against the collection's image rows first."""
        emb, _ = self.embeddings
        folder = self.t.summary["regions"]["path"]
        checks = json.loads(props.get("mmr.checks", "{}")) | {
            "regions": check_regions(Path(folder), region_ids(emb, self.t.summary))}
        self.ix.set_properties(self.t.name, {REGIONS: folder, "mmr.checks": json.dumps(checks)})
        log.info("publish %s: %s gets its region store %s", self.dataset, self.t.name, folder)

    def check(self) -> dict[str, Any]:
        ix, t = self.ix, self.t
        if not ix.exists(t.name):
            raise PublishError(f"collection {t.name} does not exist: run the publish build step first")
        props = ix.properties(t.name)
        if props.get(STATE) == VERIFIED:
            return {"collection": t.name, "checks": json.loads(props.get("mmr.checks", "{}")), "verified": False}
        emb, raw = self.embeddings
        stored = centring.Centring.from_property(props.get(centring.PROPERTY), f"collection {t.name}")
        vectors = stored.apply_rows(raw, list(emb["modality"]))  # what build inserted
        ix.load(t.name)
        checks = verify(ix, t.name, list(emb["id"]), list(emb["modality"]), vectors, self.params)
        if props.get(REGIONS):
            checks["regions"] = check_regions(Path(props[REGIONS]), region_ids(emb, t.summary))
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        ix.set_properties(t.name, {STATE: VERIFIED, "mmr.published_at": now, "mmr.checks": json.dumps(checks)})
        return {"collection": t.name, "checks": checks, "verified": True}

    def swap(self) -> dict[str, Any]:
        ix, t = self.ix, self.t
        serving = ix.resolve_alias(t.alias)
        if not ix.exists(t.name) or ix.properties(t.name).get(STATE) != VERIFIED:
            raise PublishError(f"collection {t.name} is not verified: the alias {t.alias!r} stays on {serving}")
        if serving == t.name:
            return {"collection": t.name, "alias": t.alias, "changed": False, "previous": None, "dropped": []}
        ix.set_properties(t.name, {"mmr.previous": serving or ""})  # the rollback target is what served last
        ix.point_alias(t.alias, t.name)
        dropped = _collect_garbage(ix, t.alias, keep=self.params.keep_collections)
        log.info("publish %s: %s -> %s (was %s)", self.dataset, t.alias, t.name, serving)
        return {"collection": t.name, "alias": t.alias, "changed": True, "previous": serving, "dropped": dropped}


@contextlib.contextmanager
def _publication(dataset: str, settings: Settings | None, pinned: Pinned | None = None) -> Iterator[_Publication]:
    settings = settings or get_settings()
    with MilvusIndex(settings.milvus_uri, settings.milvus_token) as ix:
        yield _Publication(dataset, settings, ix, pinned)


def build(dataset: str, settings: Settings | None = None, pinned: Pinned | None = None) -> dict[str, Any]:
    """Step 1: create the versioned collection (state ``building``), insert, index, load. Nothing serves it yet.

    A collection of the same name left by a killed run is dropped and rebuilt, unless it was verified already.
    """
    with _publication(dataset, settings, pinned) as pub:
        return pub.build()


def check(dataset: str, settings: Settings | None = None, pinned: Pinned | None = None) -> dict[str, Any]:
    """Step 2: verify the built collection (:func:`verify`) and mark it ``verified``; raises PublishError if not."""
    with _publication(dataset, settings, pinned) as pub:
        return pub.check()


def swap(dataset: str, settings: Settings | None = None, pinned: Pinned | None = None) -> dict[str, Any]:
    """Step 3: point the serving alias at the verified collection (created on the first publish); drop old ones."""
    with _publication(dataset, settings, pinned) as pub:
        return pub.swap()


def run(dataset: str, settings: Settings | None = None, pinned: Pinned | None = None) -> PublishResult:
    """All three steps on one connection, the embeddings read once; a rerun with unchanged inputs changes nothing,
    a crash at any step never moves the alias. ``pinned``: publish exactly that model and data version."""
    started = time.monotonic()
    with _publication(dataset, settings, pinned) as pub:
        t = pub.t
        props = pub.ix.properties(t.name) if pub.ix.resolve_alias(t.alias) == t.name else {}
        if props.get(STATE) == VERIFIED and not regions_missing(props, t.summary):
            log.info("publish %s: %s already serves model v%s on data %s", dataset, t.alias, t.ref.version,
                     t.summary["data_version"][:12])
            return PublishResult(dataset, t.alias, t.name, changed=False)
        built = pub.build()
        checked = pub.check()
        swapped = pub.swap()
    checks = checked["checks"] if built["built"] else {**checked["checks"], "reused": True}
    return PublishResult(dataset, t.alias, t.name, swapped["changed"], swapped["previous"], t.ref.name,
                         t.ref.version, t.summary["data_version"], checks, swapped["dropped"],
                         round(time.monotonic() - started, 2))


def calibration_of(settings: Settings, ref: tracking.ModelRef) -> str:
    """The score calibration the evaluate stage recorded on model version ``ref`` (its JSON, checked), for the
    collection's :data:`~mmretrieval.evaluation.calibration.PROPERTY`; empty when it has none (evaluated before
    calibration existed) or it does not parse (logged): the collection then serves without confidences."""
    raw = tracking.version_tags(settings, ref).get(calibration.TAG, "")
    try:
        calibration.Calibration.from_json(raw, f"{ref.uri}'s {calibration.TAG!r} tag")
    except CalibrationError as e:
        log.warning("publish: %s; the collection serves without confidences", e)
        return ""
    if not raw:
        log.info("publish: %s has no score calibration: hits get no confidence, no no_good_match", ref.uri)
    return raw


def regions_missing(props: dict[str, Any], summary: dict[str, Any]) -> bool:
    """The embeddings carry a region store that the collection (its properties ``props``) does not record."""
    return bool(summary.get("regions")) and not props.get(REGIONS)


def region_ids(embeddings: Any, summary: dict[str, Any]) -> list[str]:
    """The ids of the embedded rows that need regions: those of the modality the region store was written for
    (``summary["regions"]["modality"]``; stores from before audio re-ranking hold images)."""
    modality = (summary.get("regions") or {}).get("modality", "image")
    return list(embeddings.loc[embeddings["modality"] == modality, "id"])


def check_regions(folder: Path, ids: list[str]) -> dict[str, Any]:
    """Every row ``ids`` names (:func:`region_ids`) has its regions in the store at ``folder``; raises
    :class:`PublishError`."""
    from mmretrieval.backends.regions import RegionStore
    from mmretrieval.core.errors import ModelError

    try:
        store = RegionStore(folder)
    except ModelError as e:
        raise PublishError(f"the collection's region store is unusable: {e}") from e
    lacking = store.missing(ids)
    if lacking:
        raise PublishError(f"{len(lacking)} row(s) have no regions in {folder}, e.g. {lacking[:3]}: embed again")
    return {"items": len(ids), "bytes_per_item": store.meta["bytes_per_item"]}


def _metadata(raw: str, media: str) -> dict[str, Any]:
    meta = json.loads(raw or "{}")
    meta["clean_media"] = media
    return meta


def _collect_garbage(ix: MilvusIndex, alias: str, keep: int) -> list[str]:
    serving = ix.require_alias(alias)
    protected = {serving, ix.properties(serving).get("mmr.previous", "")}
    others = []
    for name in ix.collections(prefix=f"{alias}__"):
        if name not in protected:
            others.append((ix.properties(name).get("mmr.published_at", ""), name))
    # newest first; the protected ones count towards `keep`
    budget = max(0, keep - len(protected - {""}))
    doomed = [name for _, name in sorted(others, reverse=True)[budget:]]
    for name in doomed:
        ix.drop(name)
    return doomed


def rollback(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    """Point the serving alias back at the collection it served before the last publish."""
    settings = settings or get_settings()
    alias = settings.alias(dataset)
    with MilvusIndex(settings.milvus_uri, settings.milvus_token) as ix:
        current = ix.require_alias(alias)
        previous = ix.properties(current).get("mmr.previous", "")
        if not previous or not ix.exists(previous):
            raise AliasNotFoundError(f"alias {alias!r} serves {current}, which has no previous collection to "
                                     "roll back to")
        ix.point_alias(alias, previous)
    return {"dataset": dataset, "alias": alias, "collection": previous, "rolled_back_from": current}
