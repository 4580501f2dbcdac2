"""Stage ``publish``: a new versioned Milvus collection, checked, then the serving alias swapped to it.

Collection name: ``<alias>__m<model_version>__d<data_version[:12]>``. Steps: create (state ``building``) -> insert
-> index -> load -> verify (row count, ANN recall@10 against exact search on a sample, a smoke query per modality)
-> state ``verified`` -> alias swap. A crash at any step leaves the alias on the old collection; the next run drops the
half-built collection and starts again; a rerun with unchanged inputs changes nothing. Older collections beyond
``index.keep_collections`` are dropped (never the serving one or its rollback target).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np

from mmretrieval import tracking
from mmretrieval.config import IndexParams, Settings, get_settings
from mmretrieval.errors import AliasNotFoundError, PublishError
from mmretrieval.index import MilvusIndex
from mmretrieval.io import read_json, read_parquet

log = logging.getLogger(__name__)
SAMPLE_QUERIES = 200
STATE, VERIFIED, BUILDING = "mmr.state", "verified", "building"


def collection_name(alias: str, model_version: str, data_version: str) -> str:
    return f"{alias}__m{model_version}__d{data_version[:12]}"


def load_embeddings(settings: Settings, dataset: str, ref: tracking.ModelRef) -> tuple[dict[str, Any], Any]:
    import pandas as pd

    from mmretrieval.embed import output_dir

    folder = output_dir(settings, dataset, ref.version)
    summary = read_json(folder / "embed.json", f"embeddings of {dataset!r} with model v{ref.version}")
    frame = pd.concat([pd.read_parquet(folder / s) for s in summary["shards"]], ignore_index=True)
    return summary, frame


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


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    settings = settings or get_settings()
    params = settings.params_for(dataset).index
    started = time.monotonic()
    ref = tracking.require_alias(settings, dataset, tracking.CHAMPION)
    summary, emb = load_embeddings(settings, dataset, ref)
    clean = read_parquet(settings.stage_dir("clean", dataset) / "manifest.parquet", f"clean manifest of {dataset!r}")
    alias = settings.alias(dataset)
    name = collection_name(alias, ref.version, summary["data_version"])

    def swapped(serving: str | None, checks: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
        return {"dataset": dataset, "alias": alias, "collection": name, "changed": True, "previous": serving,
                "model": ref.name, "model_version": ref.version, "data_version": summary["data_version"],
                "checks": checks, "dropped": dropped, "seconds": round(time.monotonic() - started, 2)}

    with MilvusIndex(settings.milvus_uri, settings.milvus_token) as ix:
        serving = ix.resolve_alias(alias)
        if serving == name and ix.properties(name).get(STATE) == VERIFIED:
            log.info("publish %s: %s already serves model v%s on data %s", dataset, alias, ref.version,
                     summary["data_version"][:12])
            return {"dataset": dataset, "alias": alias, "collection": name, "changed": False}
        if ix.exists(name):  # left by an earlier run, never the serving one (checked above)
            props = ix.properties(name)
            if props.get(STATE) == VERIFIED:  # built and checked, then killed before the swap: just swap
                ix.load(name)
                if ix.count(name) == len(emb):
                    log.info("publish %s: %s was verified before a crash; swapping the alias", dataset, name)
                    ix.point_alias(alias, name)
                    dropped = _collect_garbage(ix, alias, keep=params.keep_collections)
                    return swapped(serving, {"rows": len(emb), "reused": True}, dropped)
            log.warning("publish %s: dropping half-built collection %s", dataset, name)
            ix.drop(name)

        meta = clean.set_index("id").loc[emb["id"]]
        vectors = np.stack(emb["vector"].to_numpy()).astype(np.float32)
        rows = [{"id": i, "modality": m, "vector": v.tolist(), "text": t, "path": p, "label": lab,
                 "metadata": _metadata(md, media), "model_version": ref.version,
                 "data_version": summary["data_version"]}
                for i, m, v, t, p, lab, md, media in zip(
                    emb["id"], emb["modality"], vectors, meta["text"], meta["path"], meta["label"],
                    meta["metadata"], meta["media"], strict=True)]
        props = {STATE: BUILDING, "mmr.dataset": dataset, "mmr.model_name": ref.name,
                 "mmr.model_version": ref.version, "mmr.data_version": summary["data_version"],
                 "mmr.dim": str(summary["dim"]), "mmr.previous": serving or ""}
        ix.create(name, int(summary["dim"]), props)
        with tqdm(total=len(rows), desc=f"publish {dataset}", unit="row", leave=False, disable=None) as bar:
            done = 0
            for count in ix.insert(name, rows):
                bar.update(count - done)
                done = count
        ix.build_index(name, params)
        ix.load(name)
        checks = verify(ix, name, list(emb["id"]), list(emb["modality"]), vectors, params)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        ix.set_properties(name, {STATE: VERIFIED, "mmr.published_at": now})
        ix.point_alias(alias, name)
        dropped = _collect_garbage(ix, alias, keep=params.keep_collections)
    result = swapped(serving, checks, dropped)
    log.info("publish %s: %s -> %s (%d rows, %s)", dataset, alias, name, checks["rows"], checks)
    return result


def _metadata(raw: str, media: str) -> dict[str, Any]:
    import json

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
