"""Stage ``embed``: every clean item through the model an MLflow alias names (reader -> encoder -> writer).

Output ``data/embeddings/<dataset>/v<model_version>/``: ``part-*.parquet`` shards (id, modality, vector,
model_version, data_version) and ``embed.json`` (model, data version, dimension, counts per modality). A rerun with
the same model and data version finds the finished output and does nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmretrieval import tracking
from mmretrieval.config import Settings, get_settings
from mmretrieval.errors import ModelError
from mmretrieval.io import atomic_dir, read_json, read_parquet, write_json
from mmretrieval.schema import Modality, split_captions

log = logging.getLogger(__name__)
SHARD_ROWS = 10_000


def output_dir(settings: Settings, dataset: str, version: str) -> Path:
    return settings.stage_dir("embeddings", dataset) / f"v{version}"


def run(dataset: str, settings: Settings | None = None, alias: str = tracking.CHAMPION) -> dict[str, Any]:
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader, Dataset
    from tqdm import tqdm

    from mmretrieval.media import open_image
    from mmretrieval.models.dual_encoder import pick_device

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    started = time.monotonic()
    clean_dir = settings.stage_dir("clean", dataset)
    clean = read_parquet(clean_dir / "manifest.parquet", f"clean manifest of {dataset!r}")
    data_version = str(read_json(clean_dir / "report.json", "clean report")["data_version"])
    ref = tracking.require_alias(settings, dataset, alias)
    out = output_dir(settings, dataset, ref.version)
    done = out / "embed.json"
    if done.is_file():
        previous = read_json(done, "embedding summary")
        if previous["data_version"] == data_version and previous["rows"] == len(clean):
            log.info("embed %s: v%s already embedded for data %s", dataset, ref.version, data_version[:12])
            return previous | {"skipped": True}

    device = pick_device(settings.device)
    model = tracking.load_model(settings, ref, device)
    unsupported = sorted(set(clean["modality"]) - set(model.modalities))
    if unsupported:
        raise ModelError(f"model {ref.uri} has no tower for modality {unsupported}; "
                         f"{int(clean['modality'].isin(unsupported).sum())} clean items need one")
    vectors = np.zeros((len(clean), model.dim), dtype=np.float32)
    bs = params.embed.batch_size

    texts = clean.index[clean["modality"] == Modality.TEXT.value]
    for start in range(0, len(texts), bs):
        idx = texts[start:start + bs]
        vectors[idx] = model.encode_texts([split_captions(t)[0] for t in clean.loc[idx, "text"]])

    class Decoded(Dataset):  # type: ignore[type-arg]
        """Reader: decodes and preprocesses one modality's files (in loader workers when configured)."""

        def __init__(self, rows: np.ndarray, modality: str) -> None:
            self.rows, self.modality = rows, modality

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
            i = int(self.rows[k])
            path = clean_dir / clean.at[i, "media"]
            if self.modality == Modality.IMAGE.value:
                return model.transform(open_image(path)), i
            return model.load_wave(path), i

    for modality in (Modality.IMAGE.value, Modality.AUDIO.value):
        rows = clean.index[clean["modality"] == modality].to_numpy()
        if not len(rows):
            continue
        loader = DataLoader(Decoded(rows, modality), batch_size=bs, num_workers=params.train.num_workers,
                            pin_memory=device == "cuda")
        encode = model.encode_pixels if modality == Modality.IMAGE.value else model.encode_waves
        for batch, idx in tqdm(loader, desc=f"embed {dataset} {modality}", unit="batch", leave=False, disable=None):
            vectors[idx.numpy()] = encode(batch)

    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ModelError(f"{int((np.abs(norms - 1) > 1e-3).sum())} embeddings are not unit vectors (NaN input?)")
    with atomic_dir(out) as tmp:
        shards = []
        for k, start in enumerate(range(0, len(clean), SHARD_ROWS)):
            part = clean.iloc[start:start + SHARD_ROWS]
            frame = pd.DataFrame({
                "id": part["id"].to_numpy(), "modality": part["modality"].to_numpy(),
                "vector": list(vectors[start:start + SHARD_ROWS]),
                "model_version": ref.version, "data_version": data_version,
            })
            name = f"part-{k:05d}.parquet"
            frame.to_parquet(tmp / name, index=False)
            shards.append(name)
        summary = {
            "dataset": dataset, "model": ref.name, "model_version": ref.version, "model_uri": ref.uri,
            "data_version": data_version, "dim": model.dim, "rows": len(clean),
            "modalities": {k: int(v) for k, v in clean["modality"].value_counts().items()},
            "shards": shards, "device": device, "seconds": round(time.monotonic() - started, 2),
            "path": str(out),
        }
        write_json(tmp / "embed.json", summary)
    log.info("embed %s: %d items with %s v%s in %.1fs", dataset, len(clean), ref.name, ref.version,
             summary["seconds"])
    return summary
