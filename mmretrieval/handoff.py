"""Stage hand-off between workers that share no disk: the sync around every stage run (``MMR_DATA_URL``).

Without a data store (the default) every function here does nothing but call the stage: one machine, one
``MMR_HOME``, as before. With one (:mod:`mmretrieval.backends.store`), a worker's ``data/`` is a cache: before a
stage runs, its inputs (:data:`READS`) are pulled from the store (a committed version the local copy already holds
is not downloaded again); after it succeeded, its outputs (:data:`WRITES`) are pushed and committed. A stage that
fails pushes nothing. The stages themselves never see the store.

Units (store keys) of a dataset ``ds``:

==================  =============================================  ==============================================
name                store unit                                     local path
==================  =============================================  ==============================================
raw                 ``raw/<ds>.dvc`` (the pointer; data in DVC's    ``data/raw/<ds>/`` (+ ``.dvc``), pulled with
                    remote ``<MMR_DATA_URL>/dvc``)                  ``dvc pull`` of exactly that version
validated           ``validated/<ds>``                             ``data/validated/<ds>/``
clean               ``clean/<ds>``                                 ``data/clean/<ds>/`` (manifest + media)
augmented           ``augmented/<ds>``                             ``data/augmented/<ds>/``
reports             ``reports/<ds>``                               ``data/reports/<ds>/`` (every stage's result)
promotions          ``var/promotions/<ds>.jsonl``                  ``var/promotions/<ds>.jsonl``
embeddings          ``embeddings/<ds>/v<N>``                       ``data/embeddings/<ds>/v<N>/``
shards              ``embeddings/<ds>/v<N>.partial/shard-<k>``     merged into ``data/embeddings/<ds>/v<N>.partial/``
==================  =============================================  ==============================================

Models never travel this way: they are registered in MLflow (a tracking server keeps artifacts in the bucket) and
every stage loads them from there; training checkpoints (``var/checkpoints``) stay local, so a training retried on
another worker starts again. With a store, :func:`synced` also holds the stage's per-dataset lock (``train``,
``gate``, ``rerank``; shared across hosts with ``MMR_LOCK_URL``) around pull, run and push, so a second run never
starts from outputs the first is about to replace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.contracts import EmbedStart, Pinned
from mmretrieval.core.io import sha256_file
from mmretrieval.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from mmretrieval.backends.store import Store

log = logging.getLogger(__name__)

# Which outputs each verb reads and writes (every verb also reads and writes ``reports``: its result JSON).
READS: dict[str, tuple[str, ...]] = {
    "validate": ("raw",),
    "clean": ("raw", "validated"),
    "augment": ("clean",),
    "train": ("validated", "clean", "augmented"),  # validated: the data docs page logged with the run
    "evaluate": ("clean",),
    "rerank": ("clean", "promotions"),
    "promote": ("promotions",),
    "embed": ("clean", "embeddings", "shards"),
    "publish": ("clean", "embeddings"),
}
WRITES: dict[str, tuple[str, ...]] = {
    "validate": ("validated",),
    "clean": ("clean",),
    "augment": ("augmented",),
    "train": (),
    "evaluate": (),
    "rerank": ("promotions",),
    "promote": ("promotions",),
    "embed": ("embeddings",),
    "publish": (),
}
LOCKS = {"train": "train", "evaluate": "gate", "promote": "gate", "rerank": "rerank"}  # as the stages take them
FOLDERS = ("validated", "clean", "augmented", "reports")


def store_of(settings: Settings) -> Store | None:
    """The shared data store of ``settings`` (None: local only)."""
    if not settings.data_url:
        return None
    from mmretrieval.backends.store import from_settings

    return from_settings(settings)


def model_version(settings: Settings, dataset: str, inputs: dict[str, Any]) -> str:
    """The model version an embed or publish call works on: the pinned one, else the alias's (champion)."""
    pinned = inputs.get("pinned")
    if pinned is not None:
        return str(pinned.model_version)
    from mmretrieval.backends import tracking

    return tracking.require_alias(settings, dataset, inputs.get("alias") or tracking.CHAMPION).version


def unit(settings: Settings, dataset: str, name: str, version: str = "") -> tuple[str, Path]:
    """``(store unit, local path)`` of output ``name`` of ``dataset`` (table in the module doc)."""
    layout = settings.layout(dataset)
    if name in FOLDERS:
        return f"{name}/{dataset}", layout.stage(name)
    if name == "promotions":
        return f"var/promotions/{dataset}.jsonl", layout.promotions_log
    if name == "embeddings":
        return f"embeddings/{dataset}/v{version}", layout.embeddings(version)
    if name == "raw":
        return f"raw/{dataset}.dvc", layout.raw.with_name(dataset + ".dvc")
    raise KeyError(f"unknown output {name!r}")


@contextlib.contextmanager
def synced(verb: str, dataset: str, settings: Settings, inputs: dict[str, Any]) -> Iterator[None]:
    """Around one stage run: pull its inputs (:data:`READS` and ``reports``), then (if the block succeeds) push its
    outputs (:data:`WRITES` and ``reports``); a no-op without a data store. Holds the verb's per-dataset lock
    throughout when it has one (:data:`LOCKS`)."""
    if not settings.data_url:
        yield
        return
    version = model_version(settings, dataset, inputs) if verb in ("embed", "publish") else ""
    with around(dataset, settings, (*READS[verb], "reports"), (*WRITES[verb], "reports"), LOCKS.get(verb), version):
        yield
    if verb == "embed":
        drop_shards(store_of(settings), dataset, version)  # type: ignore[arg-type]


@contextlib.contextmanager
def around(dataset: str, settings: Settings, reads: tuple[str, ...], writes: tuple[str, ...],
           lock: str | None = None, version: str = "") -> Iterator[None]:
    """Pull the outputs named in ``reads``, run the block, push those named in ``writes`` (after a success), all
    under the dataset's lock ``lock`` when given; a no-op without a data store. For calls that are not a stage verb
    (``mmr promote --rollback``, ``mmr distill``)."""
    store = store_of(settings)
    if store is None:
        yield
        return
    from mmretrieval.core.locks import dataset_lock

    with dataset_lock(settings, dataset, lock) if lock else contextlib.nullcontext():
        for name in writes:
            store.forget(unit(settings, dataset, name, version)[0])  # the local copy is about to change
        for name in reads:
            pull(store, settings, dataset, name, version)
        yield
        for name in writes:
            key, path = unit(settings, dataset, name, version)
            if path.exists():
                store.push(path, key)


def pull(store: Store, settings: Settings, dataset: str, name: str, version: str = "") -> None:
    """Bring output ``name`` of ``dataset`` from the store into the local layout (nothing when none is committed:
    the stage then reports the missing input as it always does)."""
    if name == "raw":
        pull_raw(store, settings, dataset)
    elif name == "shards":
        merge_shards(store, settings, dataset, version)
    else:
        key, path = unit(settings, dataset, name, version)
        store.pull(key, path)


# --- raw data: DVC's remote in the same bucket, its pointer through the store ---------------------------------------
def push_raw(settings: Settings, dataset: str) -> None:
    """After ``mmr ingest``: ``dvc push`` the data version to ``<MMR_DATA_URL>/dvc`` and commit its ``.dvc`` pointer
    as ``raw/<ds>.dvc``. Nothing without a data store."""
    store = store_of(settings)
    if store is None:
        return
    from mmretrieval.backends import versioning

    versioning.use_remote(settings.home, settings.data_url)
    versioning.push(settings.home, settings.layout(dataset).raw)
    key, pointer = unit(settings, dataset, "raw")
    store.push(pointer, key)


def pull_raw(store: Store, settings: Settings, dataset: str) -> None:
    """Fetch the committed ``.dvc`` pointer of ``dataset`` and ``dvc pull`` exactly that version into
    ``data/raw/<ds>/`` (DVC initialised in this ``MMR_HOME`` if needed); skipped when the local copy is that
    version already, unmodified."""
    from mmretrieval.backends import versioning

    key, pointer = unit(settings, dataset, "raw")
    raw = settings.layout(dataset).raw
    held = store.marked(key)
    record = store.pull(key, pointer)
    if record is None:
        return
    if held == record["commit"] and raw.is_dir() and not versioning.is_modified(settings.home, raw):
        return
    versioning.use_remote(settings.home, settings.data_url)
    versioning.pull(settings.home, raw)
    log.info("raw %s: pulled data version %s", dataset, versioning.read_version(raw)[:12])


def ingest(manifest: Path, name: str, settings: Settings | None = None) -> dict[str, Any]:
    """``mmr ingest``: :func:`mmretrieval.stages.ingest.ingest`, then :func:`push_raw` (with a data store)."""
    from mmretrieval.stages.ingest import ingest as copy_and_track

    settings = settings or get_settings()
    result = copy_and_track(manifest, name, settings)
    push_raw(settings, name)
    return result


# --- embedding shards: committed one by one, merged by the finishing step --------------------------------------------
def shard_unit(dataset: str, version: str, k: int) -> str:
    return f"embeddings/{dataset}/v{version}.partial/shard-{k:05d}"


def shard_files(work: Path, k: int) -> list[Path]:
    """The files of shard ``k`` in an embedding work folder (its part file, timings, region shard) and plan.json."""
    tag = f"-{k:05d}."
    return [p for p in sorted(work.rglob("*"))
            if p.is_file() and ((tag in p.name and ".tmp" not in p.name) or p.name == "plan.json")]


def push_shard(store: Store, settings: Settings, dataset: str, version: str, k: int) -> None:
    """Commit shard ``k`` of ``v<version>.partial`` on its own (with the plan it belongs to)."""
    work = settings.layout(dataset).embeddings(version + ".partial")
    outbox = settings.var_dir / "store" / "outbox" / f"{dataset}-v{version}-{k:05d}-{os.getpid()}"
    shutil.rmtree(outbox, ignore_errors=True)
    try:
        for f in shard_files(work, k):
            target = outbox / f.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
        store.push(outbox, shard_unit(dataset, version, k))
    finally:
        shutil.rmtree(outbox, ignore_errors=True)


def merge_shards(store: Store, settings: Settings, dataset: str, version: str) -> list[int]:
    """Pull every committed shard of ``v<version>.partial`` into the local work folder (the part file last: it
    marks a shard done), those of the local plan only (all of one plan when there is no local plan). Returns the
    shard numbers merged."""
    from mmretrieval.core.io import read_json

    work = settings.layout(dataset).embeddings(version + ".partial")
    prefix = f"embeddings/{dataset}/v{version}.partial"
    plan = read_json(work / "plan.json", "plan") if (work / "plan.json").is_file() else None
    merged = []
    for key in store.units(prefix):
        inbox = settings.var_dir / "store" / "inbox" / key
        if store.pull(key, inbox) is None or not (inbox / "plan.json").is_file():
            continue
        shard_plan = read_json(inbox / "plan.json", "shard plan")
        if plan is not None and shard_plan != plan:
            continue  # of another plan: plan() discards or recomputes it
        plan = shard_plan
        files = sorted((p for p in inbox.rglob("*") if p.is_file()), key=lambda p: p.name.startswith("part-"))
        for f in files:
            target = work / f.relative_to(inbox)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.merge-{os.getpid()}")
            shutil.copy2(f, tmp)
            os.replace(tmp, target)
        merged.append(int(key.rsplit("-", 1)[-1]))
    if merged:
        log.info("embed %s: %d shard(s) of v%s from the store", dataset, len(merged), version)
    return merged


def drop_shards(store: Store, dataset: str, version: str) -> None:
    """Delete the shard units of ``v<version>.partial`` once ``v<version>`` is committed."""
    for key in store.units(f"embeddings/{dataset}/v{version}.partial"):
        store.delete(key)


# --- the serve DAG's direct calls ------------------------------------------------------------------------------------
def embed_start(dataset: str, settings: Settings | None = None) -> EmbedStart:
    """:func:`mmretrieval.stages.embed.start` with its inputs pulled: the clean data, the champion's finished
    embeddings and the shards committed so far (so ``shards`` lists only what no worker has committed)."""
    from mmretrieval.stages import embed

    settings = settings or get_settings()
    store = store_of(settings)
    if store is not None:
        version = model_version(settings, dataset, {})
        for name in ("clean", "embeddings", "shards"):
            pull(store, settings, dataset, name, version)
    return embed.start(dataset, settings)


def embed_shard(dataset: str, shard: int, settings: Settings | None = None, pinned: Pinned | None = None
                ) -> dict[str, Any]:
    """:func:`mmretrieval.stages.embed.run_shard`, its shard then committed on its own; skipped when the store
    already holds that shard committed for the same plan (a retried or redelivered task)."""
    from mmretrieval.stages import embed

    settings = settings or get_settings()
    store = store_of(settings)
    if store is None:
        return embed.run_shard(dataset, shard, settings, pinned)
    pull(store, settings, dataset, "clean")
    p = embed.plan(dataset, settings, pinned=pinned)
    committed = store.commit(shard_unit(dataset, p.ref.version, shard))
    if committed is not None and (p.work / "plan.json").is_file() and committed["files"].get("plan.json", {}).get(
            "sha256") == sha256_file(p.work / "plan.json"):
        return {"shard": shard, "skipped": True}  # committed for this very plan (not one of older data)
    result = embed.embed_shard(p, shard, settings)
    push_shard(store, settings, dataset, p.ref.version, shard)
    return result


def _publish_step(step: str, dataset: str, settings: Settings | None, pinned: Pinned | None) -> dict[str, Any]:
    from mmretrieval.stages import publish

    settings = settings or get_settings()
    store = store_of(settings)
    if store is not None:
        version = model_version(settings, dataset, {"pinned": pinned})
        for name in ("clean", "embeddings"):
            pull(store, settings, dataset, name, version)
    return dict(getattr(publish, step)(dataset, settings, pinned))


def publish_build(dataset: str, settings: Settings | None = None, pinned: Pinned | None = None) -> dict[str, Any]:
    """:func:`mmretrieval.stages.publish.build` with the clean data and the pinned embeddings pulled."""
    return _publish_step("build", dataset, settings, pinned)


def publish_check(dataset: str, settings: Settings | None = None, pinned: Pinned | None = None) -> dict[str, Any]:
    """:func:`mmretrieval.stages.publish.check` with the clean data and the pinned embeddings pulled."""
    return _publish_step("check", dataset, settings, pinned)
