"""Re-ranking as serving meets it: the gated re-ranker of a model version (downloaded through the MLflow door,
built here, kept in the model cache), why a version has none, and the region store the embed stage writes for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.core.errors import ModelError
from mmretrieval.core.settings import Settings
from mmretrieval.serving.loading import cached

if TYPE_CHECKING:
    import torch

    from mmretrieval.models.reranker import CrossReranker


ARTIFACT = "reranker"  # folder on the dual encoder's MLflow run
GATE_TAG = "reranker.gate"  # the registered version's tag: PASS or REFUSE
PASS, REFUSE = "pass", "refuse"


def reranker_cache(settings: Settings, ref: tracking.ModelRef) -> Path:
    """Where the re-ranker of a version is kept after download."""
    return tracking.model_cache(settings, ref.name, f"{ref.version}-{ARTIFACT}")


def reranker_key(settings: Settings, ref: tracking.ModelRef) -> tuple[str, ...]:
    """The model-cache key of a version's re-ranker (:func:`mmretrieval.serving.loading.forget` it after a change)."""
    return ("reranker", settings.mlflow_uri, ref.name, ref.version)


def serving_reranker(settings: Settings, ref: tracking.ModelRef) -> CrossReranker | None:
    """The re-ranker of a dual-encoder version when it passed its gate, else None (cached per process)."""
    return cached(reranker_key(settings, ref), lambda: _load_reranker(settings, ref))


def _load_reranker(settings: Settings, ref: tracking.ModelRef) -> CrossReranker | None:
    if reranker_config(settings, ref) is None:
        return None
    from mmretrieval.models.reranker import load

    return load(reranker_cache(settings, ref))[0]


def gate_passed(settings: Settings, ref: tracking.ModelRef) -> bool:
    """Whether version ``ref``'s re-ranker passed its gate (the version's :data:`GATE_TAG` in the registry)."""
    return tracking.version_tags(settings, ref).get(GATE_TAG) == PASS


def reranker_config(settings: Settings, ref: tracking.ModelRef) -> dict[str, Any] | None:
    """The saved configuration (the fields of :class:`~mmretrieval.models.reranker.RerankerConfig`, e.g.
    ``modality``) of version ``ref``'s re-ranker when it passed its gate, else None. Downloads it once (into
    :func:`reranker_cache`) and builds nothing, so it imports no torch. Raises :class:`ModelError` for a download
    that is not a re-ranker or one trained for another version, :class:`TrackingError`."""
    if not gate_passed(settings, ref):
        return None
    target = tracking.download_run_artifact(settings, ref.run_id, ARTIFACT, reranker_cache(settings, ref),
                                            f"{ref.uri} passed its re-ranker gate but")
    cfg = target / "config.json"
    if not cfg.is_file() or not (target / "weights.safetensors").is_file():
        raise ModelError(f"{target} is not a saved re-ranker (needs config.json and weights.safetensors)")
    raw = json.loads(cfg.read_text(encoding="utf-8"))
    meta = raw.get("meta", {})
    if meta.get("dual_encoder_version") != ref.version:
        raise ModelError(f"re-ranker at {target} was trained for v{meta.get('dual_encoder_version')}, not "
                         f"{ref.uri}")
    return dict(raw["config"])


def why_unavailable(settings: Settings, dataset: str, ref: tracking.ModelRef) -> str:
    """Why version ``ref`` of ``dataset`` has no re-ranker to serve or teach with: refused by its gate (with the
    gate's reasons), or none trained (the stage skipped it or never ran). For messages; no absolute paths."""
    tags = tracking.version_tags(settings, ref)
    if tags.get(GATE_TAG) == REFUSE:
        return f"{ref.uri}'s re-ranker was refused by its gate ({tags.get('reranker.reasons', '')[:300]})"
    return (f"{ref.uri} has no re-ranker (the rerank stage skipped it or never ran: see its result, or "
            f"data/reports/{dataset}/rerank.json when it ran)")


def regions_dir(folder: Path) -> Path:
    """Where an embedding folder (``v<N>/`` or its ``.partial`` work folder) keeps its region store."""
    return folder / "regions"


class RegionWriter:
    """Embed stage: the regions of one shard's items of the re-ranker's ``modality``, projected from the very maps
    their vectors are pooled from (:meth:`RetrievalModel.item_maps`: one decode and one tower pass per item)."""

    def __init__(self, net: CrossReranker) -> None:
        self.net, self.modality = net, net.config.modality
        self.rows: dict[int, np.ndarray] = {}

    def add(self, rows: np.ndarray, maps: torch.Tensor) -> None:
        """(B,) shard row numbers and their (B, C, H, W) maps -> kept as (B, R, d) float16 regions."""
        import torch

        with torch.no_grad():
            regions = self.net.project_regions(maps.float()).half().numpy()
        self.rows.update({int(r): region for r, region in zip(rows, regions, strict=True)})

    def write(self, folder: Path, k: int, part: Any) -> int:
        """Region shard ``k`` of ``regions_dir(folder)`` for the ``part`` rows (a slice of the clean manifest) of the
        modality; returns how many. Raises :class:`ModelError` when one of them was never :meth:`add`-ed."""
        from mmretrieval.backends.regions import write_shard

        pick = np.flatnonzero((part["modality"] == self.modality).to_numpy())
        lacking = [int(j) for j in pick if int(j) not in self.rows]
        if lacking:
            raise ModelError(f"embed shard {k}: {len(lacking)} {self.modality} row(s) got no regions, e.g. "
                             f"{list(part['id'].iloc[lacking[:3]])}")
        c = self.net.config
        array = (np.stack([self.rows[int(j)] for j in pick]) if len(pick)
                 else np.zeros((0, c.stored_regions, c.stored_dim), dtype=np.float16))
        write_shard(regions_dir(folder), k, list(part["id"].iloc[pick]), array)
        return len(pick)


def region_writer(settings: Settings, ref: tracking.ModelRef) -> RegionWriter | None:
    """Embed stage: a :class:`RegionWriter` when version ``ref`` has a re-ranker that passed its gate, else None."""
    net = serving_reranker(settings, ref)
    return RegionWriter(net) if net is not None else None


def finish_regions(ref: tracking.ModelRef, folder: Path, shards: int, image_ids: list[str]) -> dict[str, Any]:
    """Embed stage, finish (when the plan carries regions: version ``ref`` has a re-ranker that passed its gate):
    seal the region store of ``folder`` (every shard there, and in it every id of ``image_ids``: the rows of the
    re-ranker's modality) and return its summary. Raises :class:`ModelError`."""
    from mmretrieval.backends.regions import RegionStore, finish

    meta = finish(regions_dir(folder), shards, {"model": ref.name, "model_version": ref.version})
    lacking = RegionStore(regions_dir(folder)).missing(image_ids)
    if lacking or meta["rows"] != len(image_ids):
        raise ModelError(f"region store of {folder} has {meta['rows']} rows for {len(image_ids)} items "
                         f"(missing e.g. {lacking[:3]}): embed again")
    return {"rows": meta["rows"], "bytes_per_item": meta["bytes_per_item"],
            "bytes_at_1m_items": meta["bytes_per_item"] * 1_000_000}
