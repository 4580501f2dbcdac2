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

Every step streams: the embedding shards are read a block of :data:`INSERT_ROWS` rows at a time
(:class:`Embeddings`), the centring is fitted with running sums, the rows are made by a generator
(:func:`rows_of`) that the insert draws one batch at a time, and the check's exact search keeps a running top-k;
only the clean manifest's display columns stay in memory (:class:`Display`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.backends.index import MilvusIndex, with_keywords
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
from mmretrieval.core.io import read_json, read_table
from mmretrieval.core.params import IndexParams
from mmretrieval.core.progress import progress
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.core.shards import KEY_COLUMNS, Block, read_blocks
from mmretrieval.evaluation import calibration, centring

log = logging.getLogger(__name__)
SAMPLE_QUERIES = 200
INSERT_ROWS = 1000  # rows per block read from the shards and per insert request: what publish holds at once
DISPLAY = ("text", "path", "label", "metadata", "media")  # clean manifest columns each row shows
FRAME_COLUMNS = ("frame_times", "frame_vectors")  # a video shard's per-frame columns (mmretrieval.stages.embed)
STATE, VERIFIED, BUILDING = "mmr.state", "verified", "building"


def collection_name(alias: str, model_version: str, data_version: str) -> str:
    return f"{alias}__m{model_version}__d{data_version[:12]}"


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


def verify(ix: MilvusIndex, name: str, rows: int, blocks: Callable[[], Iterable[Block]],
           params: IndexParams) -> dict[str, Any]:
    """Raise :class:`PublishError` unless the collection holds ``rows`` rows and answers well: ANN recall@10 of
    :data:`SAMPLE_QUERIES` sampled rows against exact search, and a smoke query per modality (its first row must come
    first). ``blocks()`` gives the inserted rows in order, a block at a time (:class:`~mmretrieval.core.shards.Block`,
    vectors as inserted): read twice, once for the sample and once for the exact search, never all at once."""
    n = ix.count(name)
    if n != rows:
        raise PublishError(f"collection {name} holds {n} rows, expected {rows}")
    rng = np.random.default_rng(0)
    sample = rng.choice(rows, size=min(SAMPLE_QUERIES, rows), replace=False)
    k = min(10, rows)
    queries, firsts = _sampled(blocks(), sample)
    exact = exact_top_k(queries, blocks(), k)
    hits = ix.search(name, queries, k, params, output_fields=["id"])
    found = [{h["id"] for h in row} for row in hits]
    recall = float(np.mean([len(f & set(ex)) / k for f, ex in zip(found, exact, strict=True)]))
    if recall < params.min_recall:
        raise PublishError(f"ANN recall@{k} of {name} is {recall:.3f} < index.min_recall {params.min_recall}: "
                           f"raise index.search_params (now {params.search_params})")
    smoke = {}
    for modality, (item, vector) in sorted(firsts.items()):
        top = ix.search(name, vector[None, :], k, params, expr=f'modality == "{modality}"', output_fields=["id"])[0]
        if not top or top[0]["score"] < 0.999 * float(vector @ vector):
            raise PublishError(f"smoke query for {modality} item {item!r} in {name} did not find it first: {top[:3]}")
        smoke[modality] = item
    return {"rows": n, f"ann_recall@{k}": round(recall, 4), "smoke": smoke}


def _sampled(blocks: Iterable[Block], sample: np.ndarray) -> tuple[np.ndarray, dict[str, tuple[str, np.ndarray]]]:
    """The vectors of the rows at positions ``sample`` ((len(sample), dim), in sample order) and each modality's
    first row (id, vector), from one pass over ``blocks``."""
    queries: np.ndarray | None = None
    firsts: dict[str, tuple[str, np.ndarray]] = {}
    start = 0
    for block in blocks:
        if queries is None and block.rows:
            queries = np.zeros((len(sample), block.vectors.shape[1]), dtype=np.float32)
        inside = np.flatnonzero((sample >= start) & (sample < start + block.rows))
        if len(inside):
            queries[inside] = block.vectors[sample[inside] - start]  # type: ignore[index]
        for modality in set(block.modalities) - set(firsts):
            j = int(np.flatnonzero(block.modalities == modality)[0])
            firsts[str(modality)] = (block.ids[j], block.vectors[j].copy())
        start += block.rows
    return (queries if queries is not None else np.zeros((len(sample), 0), np.float32)), firsts


def exact_top_k(queries: np.ndarray, blocks: Iterable[Block], k: int) -> list[list[str]]:
    """The ids of the ``k`` rows of ``blocks`` with the highest inner product with each of ``queries`` ((q, dim)),
    by exact search a block at a time (a running top-k: (q, k) scores and ids kept); each list unordered."""
    scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    ids = np.empty((len(queries), 0), dtype=object)
    for block in blocks:
        scores = np.concatenate([scores, queries @ block.vectors.T], axis=1)
        ids = np.concatenate([ids, np.broadcast_to(np.asarray(block.ids, dtype=object), (len(queries), block.rows))],
                             axis=1)
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, ids = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
    return [list(row) for row in ids]


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


class Embeddings:
    """The target's embedding shards, read a block of :data:`INSERT_ROWS` rows at a time (their checksums checked
    once, when this is made: :func:`check_shards`); nothing here holds more than a block's vectors."""

    def __init__(self, settings: Settings, t: Target) -> None:
        self.folder = settings.layout(t.dataset).embeddings(t.ref.version)
        self.shards = list(t.summary["shards"])
        self.rows, self.dim = int(t.summary["rows"]), int(t.summary["dim"])
        check_shards(self.folder, t.summary)

    def mismatch(self, what: str) -> PublishError:
        return PublishError(f"embeddings in {self.folder} hold {what} but their summary says {self.rows} x "
                            f"{self.dim}-d: embed again")

    def blocks(self, columns: Sequence[str] = KEY_COLUMNS, centre: centring.Centring | None = None
               ) -> Iterator[Block]:
        """The rows in order (:func:`~mmretrieval.core.shards.read_blocks`), with ``centre`` applied to the vectors
        when given. Raises :class:`PublishError` for vectors that are not of the summary's dimension."""
        try:
            for block in read_blocks(self.folder, self.shards, columns, INSERT_ROWS):
                if block.rows and block.vectors.shape[1] != self.dim:
                    raise self.mismatch(f"{block.vectors.shape[1]}-d vectors ({block.shard})")
                if centre is not None:
                    block = block._replace(vectors=centre.apply_rows(block.vectors, block.modalities))
                yield block
        except ValueError as e:  # ragged vectors
            raise self.mismatch(f"vectors of different lengths ({e})") from e

    def fit(self, params: IndexParams) -> centring.Centring:
        """One pass: the centring of ``params.centre`` (:class:`~mmretrieval.evaluation.centring.RunningMeans`);
        every vector's dimension and the row count checked against the summary before anything is inserted."""
        running = centring.RunningMeans(tuple(params.centre), params.centre_min_items)
        rows = 0
        for block in self.blocks():
            running.add(block.vectors, block.modalities)
            rows += block.rows
        if rows != self.rows:
            raise self.mismatch(f"{rows} rows")
        return running.centring()


class Display:
    """The clean manifest's display columns (:data:`DISPLAY`) as an Arrow table (no Python object per cell) and an
    id -> row position index: what each inserted row shows besides its vector."""

    def __init__(self, settings: Settings, dataset: str) -> None:
        import pandas as pd

        table = read_table(settings.layout(dataset).clean_manifest, f"clean manifest of {dataset!r}",
                           ("id", *DISPLAY))
        self.dataset = dataset
        self.index = pd.Index(table.column("id").to_numpy(zero_copy_only=False))
        self.table = table.select(list(DISPLAY))

    def take(self, ids: Sequence[str]) -> dict[str, list[Any]]:
        """The display columns of ``ids``' rows, column -> values in ``ids`` order. Raises :class:`PublishError`
        for an id the clean manifest does not have."""
        import pyarrow as pa

        at = self.index.get_indexer(ids)
        if (at < 0).any():
            raise PublishError(f"embedded item {ids[int(np.flatnonzero(at < 0)[0])]!r} is not in the clean manifest "
                               f"of {self.dataset!r} (it changed since embedding): embed again")
        rows = self.table.take(pa.array(at))
        return {c: rows.column(c).to_pylist() for c in DISPLAY}


def rows_of(emb: Embeddings, centre: centring.Centring, display: Display, versions: dict[str, str]
            ) -> Iterator[dict[str, Any]]:
    """The collection's rows, made one block at a time as they are drawn (a generator: a consumer that keeps none
    holds no more than the block being read): id, modality, centred vector, the clean manifest's display columns,
    metadata (with ``clean_media`` and a video's packed frames) and ``versions`` (model_version, data_version)."""
    for block in emb.blocks((*KEY_COLUMNS, *FRAME_COLUMNS), centre):
        shown, frames = display.take(block.ids), _frames(block.batch, emb.dim)
        for j, (item, modality) in enumerate(zip(block.ids, block.modalities, strict=True)):
            metadata = _metadata(shown["metadata"][j], shown["media"][j])
            if frames[j] is not None:
                from mmretrieval.media.video import FRAMES_KEY

                metadata[FRAMES_KEY] = frames[j]
            yield {"id": item, "modality": modality, "vector": block.vectors[j].tolist(), "text": shown["text"][j],
                   "path": shown["path"][j], "label": shown["label"][j], "metadata": metadata, **versions}


def _frames(batch: Any, dim: int) -> list[dict[str, Any] | None]:
    """Each row's packed video frames (:func:`~mmretrieval.media.video.pack_frames`), None for a row without."""
    if "frame_times" not in batch.schema.names:
        return [None] * batch.num_rows
    from mmretrieval.media.video import pack_frames

    times, flat = batch.column("frame_times"), batch.column("frame_vectors")
    return [pack_frames(times[j].values.to_numpy(), flat[j].values.to_numpy(), dim)
            if times[j].is_valid and len(times[j]) else None for j in range(batch.num_rows)]


class _Publication:
    """One publish of the champion's embeddings: the target, the open index, and its embedding shards (checked once,
    then streamed a block at a time by each step)."""

    def __init__(self, dataset: str, settings: Settings, ix: MilvusIndex, pinned: Pinned | None = None) -> None:
        self.dataset, self.settings, self.ix = dataset, settings, ix
        self.t = target(dataset, settings, pinned)
        self.params = settings.params_for(dataset).index

    @functools.cached_property
    def embeddings(self) -> Embeddings:
        return Embeddings(self.settings, self.t)

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
        emb = self.embeddings
        centre = emb.fit(self.params)
        if centre.means:
            log.info("publish %s: %s vectors centred on the corpus mean", self.dataset, centre.modalities)
        display = Display(self.settings, self.dataset)
        props = {STATE: BUILDING, "mmr.dataset": self.dataset, "mmr.model_name": t.ref.name,
                 "mmr.model_version": t.ref.version, "mmr.data_version": t.summary["data_version"],
                 "mmr.dim": str(t.summary["dim"]), "mmr.previous": serving or "",
                 centring.PROPERTY: centre.to_property()}
        if scores := calibration_of(self.settings, t.ref):  # a model evaluated before calibration existed has none
            props[calibration.PROPERTY] = scores
        if t.summary.get("regions"):  # the re-ranker's region store of these embeddings (mmretrieval.stages.rerank)
            props[REGIONS] = t.summary["regions"]["path"]
        ix.create(t.name, int(t.summary["dim"]), props)
        rows = rows_of(emb, centre, display, {"model_version": t.ref.version,
                                              "data_version": t.summary["data_version"]})
        if ix.has_keywords(t.name):  # a Milvus with BM25: keyword and hybrid search (mmretrieval.serving.hybrid)
            rows = with_keywords(rows, self.params.keyword_fields)
        try:
            for _ in progress(_steps(ix.insert(t.name, rows, batch=INSERT_ROWS)), f"publish {self.dataset} insert",
                              total=emb.rows, unit="rows", size=int):
                pass
        except IndexStoreError as e:  # a row the schema refuses: no half-built collection is left behind
            ix.drop(t.name)
            raise PublishError(f"publish {self.dataset}: {e}; the alias {t.alias!r} stays on {serving} "
                               "(validation checks these limits: validate the data again)") from e
        except PublishError:
            ix.drop(t.name)
            raise
        ix.build_index(t.name, self.params)
        ix.load(t.name)
        return {"collection": t.name, "built": True, "rows": emb.rows, "serving": serving}

    def attach_regions(self, props: dict[str, Any]) -> None:
        """Give a verified collection the region store its embeddings gained (re-embedded after the version's
        re-ranker passed its gate): the store is checked against the collection's image rows first."""
        folder = self.t.summary["regions"]["path"]
        checks = json.loads(props.get("mmr.checks", "{}")) | {
            "regions": check_regions(Path(folder), region_ids(self.embeddings.blocks(), self.t.summary))}
        self.ix.set_properties(self.t.name, {REGIONS: folder, "mmr.checks": json.dumps(checks)})
        log.info("publish %s: %s gets its region store %s", self.dataset, self.t.name, folder)

    def check(self) -> dict[str, Any]:
        ix, t = self.ix, self.t
        if not ix.exists(t.name):
            raise PublishError(f"collection {t.name} does not exist: run the publish build step first")
        props = ix.properties(t.name)
        if props.get(STATE) == VERIFIED:
            return {"collection": t.name, "checks": json.loads(props.get("mmr.checks", "{}")), "verified": False}
        emb = self.embeddings
        stored = centring.Centring.from_property(props.get(centring.PROPERTY), f"collection {t.name}")
        ix.load(t.name)
        checks = verify(ix, t.name, emb.rows, lambda: emb.blocks(centre=stored), self.params)  # as build inserted
        if props.get(REGIONS):
            checks["regions"] = check_regions(Path(props[REGIONS]), region_ids(emb.blocks(), t.summary))
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


def region_ids(blocks: Iterable[Block], summary: dict[str, Any]) -> list[str]:
    """The ids of the embedded rows (``blocks``, in order) that need regions: those of the modality the region store
    was written for (``summary["regions"]["modality"]``; stores from before audio re-ranking hold images)."""
    modality = (summary.get("regions") or {}).get("modality", "image")
    return [item for block in blocks for item, m in zip(block.ids, block.modalities, strict=True) if m == modality]


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
