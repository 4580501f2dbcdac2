"""Stage ``embed``: every clean item through the model an MLflow alias names, in shards: reader -> mapper -> writer.

The clean manifest is cut into shards of ``embed.shard_rows`` rows. Each shard is written on its own
(``part-<k>.parquet``: id, modality, vector, model_version, data_version) into a work folder
``data/embeddings/<dataset>/v<model_version>.partial/``, so a killed run resumes where it stopped and shards can be
embedded by parallel workers (the Airflow DAG maps one task per shard). :func:`finish` checks completeness (every
clean item embedded once, counts per modality, unit vectors, one dimension; the shards read a block of rows at
a time, never all at once) and swaps the folder in as ``v<model_version>/`` with ``embed.json``. A rerun with the
same model and data version does nothing.

A shard goes through three pieces, as in clip-retrieval, each timed: the *reader* (:class:`_Reader`: rows of the
manifest -> batches of one modality, files decoded and preprocessed in data-loader worker processes,
``embed.num_workers``, while the model encodes the previous batch), the *mapper* (:class:`_Mapper`, the only piece
that touches the model: batches -> unit vectors, video frame vectors and the re-ranker's regions; on CUDA the image
tower runs under autocast) and the *writer* (:class:`_Writer`: the shard's parquet file and region shard). Their
seconds and items/s, summed over the shards, are the summary's ``timings`` (:class:`Timings`), so a GPU or batched
path can replace one piece and show what it changed. The three are private classes of this stage rather than a
package of their own: nothing else embeds a manifest (training and evaluation encode in layers below), and a package
would add a layer to the import contract for one user.

In front of the reader and the mapper sits the item cache (:class:`_Cache`, ``var/cache/vectors/`` and
``regions/``): a row whose content digest (its clean file's recorded ``media_sha256``, or its text) was embedded
before by the same model weights and settings is taken from there, with no decode and no model; only the other rows
are read (their bytes checked against the recorded digest first: :class:`~mmretrieval.core.errors.DataChangedError`)
and encoded, in batches as before. The summary's ``cache`` counts both; ``checksums`` (sha256 per shard file) let
publishing check the shards it inserts.

Video rows also carry ``frame_times`` (seconds) and ``frame_vectors`` (K x dim: each sampled frame as an image), which
publishing stores with the clip so that a hit can say where in the clip the query matched best.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.core.contracts import EmbedStart, Pinned
from mmretrieval.core.errors import ModelError, PinnedInputChanged
from mmretrieval.core.io import read_json, sha256_file, swap_dir, write_json
from mmretrieval.core.layout import SUMMARY, read_clean
from mmretrieval.core.progress import progress
from mmretrieval.core.schema import Modality, split_captions
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.models.modalities import MEDIA_MODALITIES, media_modality
from mmretrieval.serving import loading

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.models.dual_encoder import RetrievalModel
    from mmretrieval.serving.reranking import RegionWriter

log = logging.getLogger(__name__)


def shard_name(k: int) -> str:
    return f"part-{k:05d}.parquet"


@dataclass(frozen=True)
class Plan:
    """What one embedding run covers: the model, the data version and the shard cut of the clean manifest."""

    dataset: str
    ref: tracking.ModelRef
    data_version: str
    rows: int
    shard_rows: int
    final: Path
    work: Path
    clean: pd.DataFrame = field(repr=False, compare=False)  # the clean manifest this plan cuts, read once
    clean_root: Path = field(repr=False, compare=False)  # the folder its ``media`` paths are relative to
    regions: str = ""  # the version has a re-ranker that passed its gate: the modality whose rows carry regions
    # in a region store beside the embeddings ("image", "audio"); "": none

    @property
    def shards(self) -> int:
        return max(1, -(-self.rows // self.shard_rows))

    def key(self) -> dict[str, Any]:
        return {"model_version": self.ref.version, "data_version": self.data_version, "rows": self.rows,
                "shard_rows": self.shard_rows, "regions": self.regions}

    def finished(self) -> dict[str, Any] | None:
        """The summary of an earlier complete run of this plan, if there is one."""
        done = self.final / SUMMARY
        if done.is_file():
            previous = read_json(done, "embedding summary")
            if previous["data_version"] == self.data_version and previous["rows"] == self.rows and (
                    not self.regions or "regions" in previous):  # a re-ranker gated in after: embed again
                return dict(previous)
        return None

    def pending(self) -> list[int]:
        return [k for k in range(self.shards) if not (self.work / shard_name(k)).is_file()]


def plan(dataset: str, settings: Settings | None = None, alias: str = tracking.CHAMPION,
         pinned: Pinned | None = None) -> Plan:
    """Resolve the alias (or take the ``pinned`` model version) and prepare the work folder; finished shards of the
    same plan are kept (resume). Raises :class:`PinnedInputChanged` when the clean data is no longer the pinned one.
    """
    settings = settings or get_settings()
    layout = settings.layout(dataset)
    source = read_clean(layout)
    clean, data_version = source.frame, source.data_version
    if pinned is not None:
        if pinned.data_version != data_version:
            raise PinnedInputChanged(f"the clean data of {dataset!r} changed during this run (pinned data version "
                                     f"{pinned.data_version[:12]}, now {data_version[:12]}): start a new run")
        ref = tracking.get_version(settings, settings.registered_model(dataset), pinned.model_version)
    else:
        ref = tracking.require_alias(settings, dataset, alias)
    final = layout.embeddings(ref.version)
    from mmretrieval.serving.reranking import serving_reranker

    net = serving_reranker(settings, ref)
    p = Plan(dataset, ref, data_version, len(clean), settings.params_for(dataset).embed.shard_rows, final,
             final.with_name(final.name + ".partial"), clean, source.root,
             regions=net.config.modality if net is not None else "")
    if p.finished() is None:
        marker = p.work / "plan.json"
        if marker.is_file() and read_json(marker, "embedding plan") != p.key():
            log.info("embed %s: discarding shards of an older plan in %s", dataset, p.work)
            shutil.rmtree(p.work)
        p.work.mkdir(parents=True, exist_ok=True)
        write_json(marker, p.key())
    return p


def timings_name(k: int) -> str:
    return f"timings-{k:05d}.json"


PIECES = ("reader", "mapper", "writer")


@dataclass
class Timings:
    """Seconds each piece spent on ``items`` rows: ``reader`` waiting for batches (decoding them itself when
    ``embed.num_workers`` is 0; worker processes decode while the mapper runs otherwise), ``mapper`` in the model,
    ``writer`` writing shard files. Wall-clock seconds of this process (``time.perf_counter``)."""

    items: int = 0
    reader: float = 0.0
    mapper: float = 0.0
    writer: float = 0.0
    reused: int = 0  # rows whose entries came from the item cache (no decode, no model)
    computed: int = 0  # rows read and encoded

    def read(self, batches: Iterable[_Batch]) -> Iterator[_Batch]:
        """``batches``, with the time spent making each (and starting the iteration) added to ``reader``."""
        started = time.perf_counter()
        it = iter(batches)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                self.reader += time.perf_counter() - started
                return
            self.reader += time.perf_counter() - started
            yield batch
            started = time.perf_counter()

    @contextmanager
    def timing(self, piece: str) -> Iterator[None]:
        """Add the block's seconds to ``piece`` (one of :data:`PIECES`)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, piece, getattr(self, piece) + time.perf_counter() - started)

    def add(self, other: Timings) -> None:
        for name in ("items", "reused", "computed", *PIECES):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def summary(self) -> dict[str, Any]:
        """``{"items": N, "reused": r, "computed": c, "reader" | "mapper" | "writer": {"seconds": s,
        "items_per_second": n / s}}``: n is the computed rows for the reader and the mapper (reused rows skip both),
        all N rows for the writer; items/s is None for a piece that took no measurable time."""
        out: dict[str, Any] = {"items": self.items, "reused": self.reused, "computed": self.computed}
        for piece in PIECES:
            seconds, n = getattr(self, piece), self.items if piece == "writer" else self.computed
            out[piece] = {"seconds": round(seconds, 3),
                          "items_per_second": round(n / seconds, 1) if seconds > 0 else None}
        return out


def embed_shard(p: Plan, k: int, settings: Settings | None = None, model: RetrievalModel | None = None
                ) -> dict[str, Any]:
    """Embed shard ``k`` of the plan (skipped when its file exists): reader and mapper (:func:`encode_rows`), then
    the writer, which puts the shard's file in place last. Returns ``{"shard", "rows", "seconds", "timings"}``
    (:meth:`Timings.summary`), or ``{"shard", "skipped": True}``. Raises :class:`ValueError` for a shard outside the
    plan and :class:`ModelError` when the plan's re-ranker is gone."""
    settings = settings or get_settings()
    if not 0 <= k < p.shards:
        raise ValueError(f"shard {k} is outside 0..{p.shards - 1} of the {p.dataset!r} embedding plan")
    if (p.work / shard_name(k)).is_file():
        return {"shard": k, "skipped": True}
    part = p.clean.iloc[k * p.shard_rows:(k + 1) * p.shard_rows].reset_index(drop=True)
    if model is None:
        model = load_model(settings, p)
    started = time.monotonic()
    regions = _region_writer(settings, p)
    timings = Timings()
    cached = _Cache(settings, p, model, regions)
    packs = [c for c in (cached.vectors, cached.region_entries) if c is not None]
    for cache in packs:  # the entries this shard used last time, one file each (core.array_cache)
        cache.open_pack(f"{p.dataset}.shard-{k}")
    vectors, frames = cached(part, model, settings.params_for(p.dataset).embed, f"embed {p.dataset} shard {k}",
                             timings)
    _Writer(p, regions)(k, part, vectors, frames, timings)
    for cache in packs:
        cache.save_pack()
    log.info("embed %s shard %d: %d item(s) reused from the item cache, %d computed", p.dataset, k, timings.reused,
             timings.computed)
    return {"shard": k, "rows": len(part), "seconds": round(time.monotonic() - started, 2),
            "reused": timings.reused, "computed": timings.computed, "timings": timings.summary()}


def _region_writer(settings: Settings, p: Plan) -> RegionWriter | None:
    """The region writer of the plan's re-ranker when the plan carries regions, else None. Raises
    :class:`ModelError` when that re-ranker is gone or is now one of another modality."""
    if not p.regions:
        return None
    from mmretrieval.serving.reranking import region_writer

    writer = region_writer(settings, p.ref)
    if writer is None or writer.modality != p.regions:
        raise ModelError(f"the embedding plan of {p.ref.uri} carries {p.regions} regions, but its re-ranker is "
                         "gone or changed: plan the embedding again")
    return writer


def load_model(settings: Settings, p: Plan) -> RetrievalModel:
    from mmretrieval.models.dual_encoder import pick_device

    model = loading.load_model(settings, p.ref, pick_device(settings.device))
    model.precision = settings.params_for(p.dataset).embed.precision
    clean = p.clean
    unsupported = sorted(set(clean["modality"]) - set(model.modalities))
    if unsupported:
        raise ModelError(f"model {p.ref.uri} has no tower for modality {unsupported}; "
                         f"{int(clean['modality'].isin(unsupported).sum())} clean items need one")
    return model


def encode_rows(part: pd.DataFrame, clean_dir: Path, model: RetrievalModel, embed_params: Any,
                desc: str = "embed", frames: dict[int, tuple[list[float], np.ndarray]] | None = None,
                regions: Any = None, *, timings: Timings | None = None) -> np.ndarray:
    """(rows, dim) unit vectors for clean-manifest rows, in row order: texts in batches, files through a
    DataLoader (:class:`_Reader`), all through the model (:class:`_Mapper`). Video rows (K frames each, sampled by
    seeking) also fill ``frames[row] = (times in seconds, (K, dim) frame unit vectors)`` when ``frames`` is given.
    With ``regions`` (a :class:`~mmretrieval.serving.reranking.RegionWriter`), the rows of its modality are encoded
    through their tower's maps, which it also gets, so a re-ranker's regions cost no second decode or tower pass.
    ``timings`` gets the rows and the reader's and mapper's seconds."""
    timings = timings if timings is not None else Timings()
    reader = _Reader(part, clean_dir, model, embed_params, desc)
    mapper = _Mapper(model, len(part), frames, regions)
    for modality in reader.modalities:
        with _threads(reader.threads(modality)):
            batches = progress(timings.read(reader.batches(modality)), f"{desc} {modality}",
                               total=len(reader.rows[modality]), size=lambda b: len(b.rows))
            for batch in batches:
                with timings.timing("mapper"):
                    mapper(batch)
    timings.items += len(part)
    return mapper.vectors


def compute_threads(embed_params: Any, workers: int, device: str) -> int:
    """Torch threads for the encoding process: ``embed.torch_threads``, or when 0 on CPU the cores the decoding
    workers leave (at least 1; more threads than free cores slowed the image tower down, docs/benchmarks.md); 0 (keep
    torch's setting) on CUDA."""
    import os

    if embed_params.torch_threads:
        return int(embed_params.torch_threads)
    if not device.startswith("cpu"):
        return 0
    return max(1, (os.cpu_count() or 1) - workers)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` (0: unchanged) for the block, restored after."""
    import torch

    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class _Batch(NamedTuple):
    """What the reader hands the mapper: ``items`` of one ``modality`` for the shard rows ``rows`` ((B,) ints):
    B captions (texts), (B, 3, S, S) pixels (images), (B, samples) waves (audio) or a batch of ``VideoClip``."""

    modality: str
    rows: np.ndarray
    items: Any




class _Reader:
    """Reader: rows of the clean manifest -> :class:`_Batch` es, one modality after the other (text, image, audio,
    video): texts as their first caption, files decoded and preprocessed (:class:`_Decoded`) in a DataLoader with
    ``embed.num_workers`` worker processes (none for a single batch)."""

    def __init__(self, part: pd.DataFrame, clean_dir: Path, model: RetrievalModel, embed_params: Any,
                 desc: str) -> None:
        self.part, self.clean_dir, self.model, self.params, self.desc = part, clean_dir, model, embed_params, desc
        kinds = part["modality"].to_numpy()
        self.rows = {m: rows for m in (Modality.TEXT.value, *MEDIA_MODALITIES)
                     if len(rows := np.flatnonzero(kinds == m))}

    @property
    def modalities(self) -> list[str]:
        """The modalities of the rows, in reading order."""
        return list(self.rows)

    def batch_size(self, modality: str) -> int:
        if modality == Modality.VIDEO.value:  # K frames per clip: a batch of clips is K times the images
            return max(1, self.params.batch_size // self.model.config.video_frames)
        return int(self.params.batch_size)

    def workers(self, modality: str) -> int:
        """Decoding worker processes for the modality's files: none for texts or a single batch."""
        if modality == Modality.TEXT.value:
            return 0
        return min(self.params.num_workers, max(0, len(self.rows[modality]) // self.batch_size(modality)))

    def threads(self, modality: str) -> int:
        """Torch threads while the modality is encoded (:func:`compute_threads`; 0: unchanged, for texts)."""
        if modality == Modality.TEXT.value:
            return 0
        return compute_threads(self.params, self.workers(modality), self.model.device)

    def batches(self, modality: str) -> Iterator[_Batch]:
        from torch.utils.data import DataLoader

        rows, bs = self.rows[modality], self.batch_size(modality)
        if modality == Modality.TEXT.value:
            texts = self.part["text"].to_numpy()
            for start in range(0, len(rows), bs):
                idx = rows[start:start + bs]
                yield _Batch(modality, idx, [split_captions(t)[0] for t in texts[idx]])
            return
        files = [self.clean_dir / m for m in self.part["media"].to_numpy()[rows]]
        workers = self.workers(modality)
        loader = DataLoader(_Decoded(files, rows, modality, self.model), batch_size=bs, num_workers=workers,
                            pin_memory=self.model.device.startswith("cuda"), prefetch_factor=4 if workers else None,
                            persistent_workers=False)
        for batch, idx in loader:
            yield _Batch(modality, idx.numpy(), batch)


class _Decoded:
    """The reader's dataset: decodes and preprocesses one modality's files (in worker processes when set)."""

    def __init__(self, files: list[Path], rows: np.ndarray, modality: str, model: RetrievalModel) -> None:
        self.files, self.rows, self.kind, self.model = files, rows, media_modality(modality), model

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, k: int) -> tuple[Any, int]:
        return self.kind.read(self.model, self.files[k]), int(self.rows[k])


class _Mapper:
    """Mapper, the only piece that touches the model: each :class:`_Batch` -> the (B, dim) unit vectors of its rows,
    kept in ``vectors`` (rows, dim) float32. Video clips also fill ``frames[row] = (times in seconds, (K, dim) frame
    vectors)`` when ``frames`` is given; with ``regions`` (a ``RegionWriter``) the rows of its modality go through
    their tower's maps, pooled into the vectors and handed to ``regions`` (one decode and one tower pass)."""

    def __init__(self, model: RetrievalModel, rows: int, frames: dict[int, tuple[list[float], np.ndarray]] | None,
                 regions: RegionWriter | None) -> None:
        self.model, self.frames, self.regions = model, frames, regions
        self.vectors = np.zeros((rows, model.dim), dtype=np.float32)

    def __call__(self, batch: _Batch) -> None:
        import torch

        model, rows, modality = self.model, batch.rows, batch.modality
        with torch.inference_mode():
            if modality == Modality.TEXT.value:
                self.vectors[rows] = model.encode_texts(batch.items)
            elif modality == Modality.VIDEO.value:  # a VideoClip batch: frames, times, audio tracks
                self.vectors[rows], per_frame = model.encode_video_pixels(batch.items)
                if self.frames is not None:
                    for j, row in enumerate(rows):
                        self.frames[int(row)] = ([round(float(t), 3) for t in batch.items.times[j]], per_frame[j])
            elif self.regions is not None and modality == self.regions.modality:
                maps = model.item_maps(modality, batch.items)
                self.vectors[rows] = model.project_maps(modality, maps)
                self.regions.add(rows, maps)
            else:
                self.vectors[rows] = media_modality(modality).encode_batch(model, batch.items)


class _Writer:
    """Writer of a plan's shards: shard ``k``'s region shard (when the plan carries regions), its rows (id,
    modality, vector, versions, video frames) and its :class:`Timings`, into the work folder; ``part-<k>.parquet``
    comes last, by a rename, and marks the shard done."""

    def __init__(self, p: Plan, regions: RegionWriter | None) -> None:
        self.p, self.regions = p, regions

    def __call__(self, k: int, part: pd.DataFrame, vectors: np.ndarray,
                 frames: dict[int, tuple[list[float], np.ndarray]], timings: Timings) -> None:
        import pandas as pd

        p = self.p
        target = p.work / shard_name(k)
        tmp = target.with_name(target.name + ".tmp")
        with timings.timing("writer"):
            if self.regions is not None:
                self.regions.write(p.work, k, part)
            frame = pd.DataFrame({"id": part["id"].to_numpy(), "modality": part["modality"].to_numpy(),
                                  "vector": list(vectors), "model_version": p.ref.version,
                                  "data_version": p.data_version})
            if frames:
                frame["frame_times"] = [frames[j][0] if j in frames else [] for j in range(len(part))]
                frame["frame_vectors"] = [frames[j][1].ravel() if j in frames else np.zeros(0, np.float32)
                                          for j in range(len(part))]
            frame.to_parquet(tmp, index=False)
        write_json(p.work / timings_name(k), asdict(timings))
        tmp.replace(target)


CACHE_FORMAT = 1  # bump when what an entry holds, or how items are decoded into it, changes


def model_identity(p: Plan, model: RetrievalModel, embed_params: Any) -> dict[str, Any]:
    """What, besides an item's bytes, decides its vector: the registered model (name, version, MLflow run id), a
    checksum of its weights (text tower included; computed once per loaded model), ``embed.precision`` and the device
    type (autocast on CUDA and bf16 change the bits)."""
    from mmretrieval.models.checksum import weights_checksum

    checksum = getattr(model, "_mmr_weights_sha256", None)
    if checksum is None:
        checksum = weights_checksum(model.net, getattr(model.text, "model", None))
        model._mmr_weights_sha256 = checksum  # type: ignore[attr-defined]
    return {"format": CACHE_FORMAT, "model": p.ref.name, "version": p.ref.version, "run_id": p.ref.run_id,
            "weights_sha256": checksum, "precision": embed_params.precision, "device": model.device.split(":")[0]}


class _Cache:
    """The item cache in front of the reader and the mapper (``var/cache/vectors/``, ``var/cache/regions/``).

    An entry is keyed by the item's content digest (the clean media file's recorded ``media_sha256``, or the sha256
    of the file when none is recorded; for a text item, the sha256 of the text it encodes) and by
    :func:`model_identity`; a region entry also by a checksum of the re-ranker's weights. Rows with entries (and, in
    the re-ranker's modality, region entries) are taken from the cache with no decode and no model; the others have
    their bytes checked against the recorded digest, go through the reader and the mapper in batches and are stored.
    """

    def __init__(self, settings: Settings, p: Plan, model: RetrievalModel, regions: RegionWriter | None) -> None:
        from mmretrieval.core.array_cache import ArrayCache
        from mmretrieval.core.cache import fingerprint
        from mmretrieval.models.checksum import weights_checksum

        identity = model_identity(p, model, settings.params_for(p.dataset).embed)
        root = settings.layout(p.dataset).item_cache
        self.vectors = ArrayCache(root, "vectors", fingerprint(identity))
        self.regions = regions
        self.region_entries = (ArrayCache(root, "regions", fingerprint(identity, weights_checksum(regions.net)))
                               if regions is not None else None)
        self.clean_root = p.clean_root

    def digests(self, part: pd.DataFrame) -> tuple[list[str], list[str]]:
        """Each row's item digest (:func:`~mmretrieval.core.integrity.item_digest`) and its recorded media digest
        (``""``: none). Hashes the media files that have none recorded; raises :class:`DataChangedError` for one
        that is gone."""
        from mmretrieval.core.integrity import item_digest, recorded, text_digest, verify_file

        known = recorded(part)
        out = []
        for modality, text, media, digest in zip(part["modality"], part["text"], part["media"], known, strict=True):
            if modality == Modality.TEXT.value:
                out.append(item_digest(modality, text_digest(split_captions(text)[0])))
            else:
                out.append(item_digest(modality, digest or verify_file(self.clean_root / media)))
        return out, known

    def lookup(self, modality: str, digest: str) -> dict[str, np.ndarray] | None:
        """The arrays of a row's entries (``vector``, video ``frame_times``/``frame_vectors``, ``regions`` in the
        re-ranker's modality), or None when one is missing."""
        entry = self.vectors.load(self.vectors.key(digest))
        if entry is None or self.region_entries is None or modality != self.regions.modality:  # type: ignore[union-attr]
            return entry
        regions = self.region_entries.load(self.region_entries.key(digest))
        return None if regions is None else entry | regions

    def __call__(self, part: pd.DataFrame, model: RetrievalModel, embed_params: Any, desc: str, timings: Timings
                 ) -> tuple[np.ndarray, dict[int, tuple[list[float], np.ndarray]]]:
        """The shard's (rows, dim) vectors and video frames, reused where the cache has them, computed otherwise;
        ``timings`` gets the counts and the reader's and mapper's seconds. The region writer gets every row's
        regions. Raises :class:`DataChangedError` naming a file whose bytes changed."""
        digests, known = self.digests(part)
        vectors = np.zeros((len(part), model.dim), dtype=np.float32)
        frames: dict[int, tuple[list[float], np.ndarray]] = {}
        misses = []
        for j, (modality, digest) in enumerate(zip(part["modality"], digests, strict=True)):
            entry = self.lookup(modality, digest)
            if entry is None:
                misses.append(j)
                continue
            vectors[j] = entry["vector"]
            if "frame_times" in entry:
                frames[j] = (entry["frame_times"].tolist(), entry["frame_vectors"])
            if "regions" in entry:
                self.regions.rows[j] = entry["regions"]  # type: ignore[union-attr]
        timings.items += len(part) - len(misses)
        timings.reused += len(part) - len(misses)
        timings.computed += len(misses)
        if misses:
            self.compute(part, np.asarray(misses), [digests[j] for j in misses], [known[j] for j in misses],
                         (model, embed_params, desc, timings), vectors, frames)
        return vectors, frames

    def compute(self, part: pd.DataFrame, rows: np.ndarray, digests: list[str], known: list[str],
                how: tuple[RetrievalModel, Any, str, Timings], vectors: np.ndarray,
                frames: dict[int, tuple[list[float], np.ndarray]]) -> None:
        """Encode the shard's rows ``rows`` (their files' bytes checked first), fill ``vectors``, ``frames`` and the
        region writer at those rows, and store their entries."""
        from mmretrieval.core.integrity import verify_files

        model, embed_params, desc, timings = how
        sub = part.iloc[rows].reset_index(drop=True)
        media = [self.clean_root / m if k else self.clean_root for m, k in zip(sub["media"], known, strict=True)]
        verify_files(media, known, f"{desc} byte check")
        sub_frames: dict[int, tuple[list[float], np.ndarray]] = {}
        kept = dict(self.regions.rows) if self.regions is not None else {}
        if self.regions is not None:
            self.regions.rows = {}
        computed = encode_rows(sub, self.clean_root, model, embed_params, desc=desc, frames=sub_frames,
                               regions=self.regions, timings=timings)
        new_regions = self.regions.rows if self.regions is not None else {}
        for j, (row, digest) in enumerate(zip(rows.tolist(), digests, strict=True)):
            vectors[row] = computed[j]
            arrays = {"vector": computed[j]}
            if j in sub_frames:
                frames[row] = sub_frames[j]
                arrays |= {"frame_times": np.asarray(sub_frames[j][0], dtype=np.float64),
                           "frame_vectors": np.asarray(sub_frames[j][1])}
            self.vectors.save(self.vectors.key(digest), **arrays)
            if j in new_regions and self.region_entries is not None:
                kept[row] = new_regions[j]
                self.region_entries.save(self.region_entries.key(digest), regions=new_regions[j])
        if self.regions is not None:
            self.regions.rows = kept


def finish(p: Plan, device: str = "cpu", started: float | None = None) -> dict[str, Any]:
    """Check the shards against the clean manifest and swap the work folder in as ``v<version>/``
    (:func:`~mmretrieval.core.io.swap_dir`), with the summary ``embed.json``. Raises :class:`ModelError` naming what
    is missing or wrong.

    ``started`` (a ``time.monotonic()`` value) adds the run's wall time to the summary as ``seconds``; ``timings``
    sums the shards' :class:`Timings` (of the processes that wrote them).
    """
    previous = p.finished()
    if previous is not None:
        return previous | {"skipped": True}
    missing = p.pending()
    if missing:
        raise ModelError(f"embeddings of {p.dataset!r} are incomplete: shard(s) {missing} of {p.shards} missing")
    dim, counts = _checked_shards(p)
    summary = {
        "dataset": p.dataset, "model": p.ref.name, "model_version": p.ref.version, "model_uri": p.ref.uri,
        "data_version": p.data_version, "dim": dim, "rows": p.rows, "modalities": counts,
        "shards": [shard_name(k) for k in range(p.shards)], "shard_rows": p.shard_rows, "device": device,
        "path": str(p.final),
    }
    if p.regions:
        from mmretrieval.serving.reranking import finish_regions

        clean = p.clean
        regions = finish_regions(p.ref, p.work, p.shards, list(clean.loc[clean["modality"] == p.regions, "id"]))
        summary["regions"] = regions | {"path": str(p.final / "regions"), "modality": p.regions}
    if started is not None:
        summary["seconds"] = round(time.monotonic() - started, 2)
    timing_files = [f for k in range(p.shards) if (f := p.work / timings_name(k)).is_file()]  # none: older shards
    total = Timings()
    for f in timing_files:
        total.add(Timings(**read_json(f, "shard timings")))
    summary["timings"] = total.summary()
    summary["cache"] = {"reused": total.reused, "computed": total.computed}
    summary["checksums"] = {shard_name(k): sha256_file(p.work / shard_name(k)) for k in range(p.shards)}
    write_json(p.work / SUMMARY, summary)
    for f in [p.work / "plan.json", *timing_files]:
        f.unlink()
    swap_dir(p.work, p.final)
    log.info("embed %s: reader %.2fs, mapper %.2fs, writer %.2fs for %d timed item(s): %d reused from the item "
             "cache, %d computed", p.dataset, total.reader, total.mapper, total.writer, total.items, total.reused,
             total.computed)
    return summary


def _checked_shards(p: Plan) -> tuple[int, dict[str, int]]:
    """The dimension and the rows per modality of the plan's shards, read a block at a time
    (:func:`~mmretrieval.core.shards.read_blocks`), once they are one row per clean item in order, unit length, of one
    dimension and as many per modality as the clean manifest has. Raises :class:`ModelError`."""
    from mmretrieval.core.shards import read_blocks

    clean_ids = p.clean["id"].to_numpy()
    rows, in_order, off_unit, dims = 0, True, 0, set()
    counts: dict[str, int] = {}
    try:
        for block in read_blocks(p.work, [shard_name(k) for k in range(p.shards)]):
            in_order = in_order and list(clean_ids[rows:rows + block.rows]) == block.ids
            rows += block.rows
            dims.add(int(block.vectors.shape[1]))
            off_unit += int((~(np.abs(np.linalg.norm(block.vectors, axis=1) - 1) <= 1e-3)).sum())  # NaN too
            for modality, n in zip(*np.unique(block.modalities.astype(str), return_counts=True), strict=True):
                counts[str(modality)] = counts.get(str(modality), 0) + int(n)
    except ValueError as e:  # ragged vectors
        raise ModelError(f"embeddings of {p.dataset!r} hold vectors of different lengths ({e}): embed again") from e
    if not in_order or rows != len(clean_ids):
        raise ModelError(f"embeddings of {p.dataset!r} hold {rows} rows that do not match the "
                         f"{len(clean_ids)} clean items: embed again")
    if off_unit:
        raise ModelError(f"{off_unit} embeddings of {p.dataset!r} are not unit vectors (NaN input?)")
    if len(dims) > 1:
        raise ModelError(f"embeddings of {p.dataset!r} have vectors of {sorted(dims)} dimensions: embed again")
    expected = {k: int(v) for k, v in p.clean["modality"].value_counts().items()}
    if counts != expected:
        raise ModelError(f"embedded counts per modality {counts} differ from the clean counts {expected}")
    return (dims.pop() if dims else 0), dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def run(dataset: str, settings: Settings | None = None, alias: str = tracking.CHAMPION,
        pinned: Pinned | None = None) -> dict[str, Any]:
    """Plan, embed every pending shard with one loaded model, finish (with ``pinned``: that model and data)."""
    settings = settings or get_settings()
    started = time.monotonic()
    p = plan(dataset, settings, alias, pinned)
    previous = p.finished()
    if previous is not None:
        log.info("embed %s: v%s already embedded for data %s", dataset, p.ref.version, p.data_version[:12])
        return previous | {"skipped": True}
    pending = p.pending()
    model = load_model(settings, p) if pending else None
    if not pending:
        log.info("embed %s: all %d shard(s) embedded (by this run's shard tasks or an earlier run); finishing",
                 dataset, p.shards)
    elif len(pending) < p.shards:
        log.info("embed %s: resuming, %d of %d shard(s) already done", dataset, p.shards - len(pending), p.shards)
    for k in pending:
        embed_shard(p, k, settings, model)
    summary = finish(p, device=model.device if model else "cpu", started=started)
    log.info("embed %s: %d items with %s v%s in %.1fs (%d shard(s)); %d reused from the item cache, %d computed",
             dataset, p.rows, p.ref.name, p.ref.version, summary.get("seconds", 0.0), p.shards,
             summary.get("cache", {}).get("reused", 0), summary.get("cache", {}).get("computed", 0))
    return summary


# One call per task of the serve DAG: start (resolves and pins) -> one mapped task per pending shard -> finish.
def start(dataset: str, settings: Settings | None = None) -> EmbedStart:
    """Resolve the champion once and pin it with the data version: ``{"model_version", "data_version", "shards"}``
    (the shards still to embed; empty when the embeddings are complete)."""
    p = plan(dataset, settings)
    shards = [] if p.finished() is not None else p.pending()
    return EmbedStart(p.ref.version, p.data_version, shards)


def pending(dataset: str, settings: Settings | None = None) -> list[int]:
    """Shard numbers still to embed for the champion (empty when the embeddings are complete)."""
    return list(start(dataset, settings)["shards"])


def run_shard(dataset: str, shard: int, settings: Settings | None = None, pinned: Pinned | None = None
              ) -> dict[str, Any]:
    return embed_shard(plan(dataset, settings, pinned=pinned), shard, settings)


def finalize(dataset: str, settings: Settings | None = None, pinned: Pinned | None = None) -> dict[str, Any]:
    return finish(plan(dataset, settings, pinned=pinned))
