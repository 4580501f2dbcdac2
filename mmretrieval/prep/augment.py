"""Stage ``augment``: the training split and the augmentation policy applied to it.

Images are augmented on the fly by the training data loader (a new random view every epoch, seeded), so this stage
writes ``data/augmented/<dataset>/manifest.parquet`` (train rows only) and ``policy.json`` (what the loader applies,
with its seed); the policy is logged with the model's MLflow run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mmretrieval.config import AugmentParams, Settings, get_settings
from mmretrieval.io import atomic_dir, read_json, read_parquet, write_json
from mmretrieval.schema import Split


def image_policy(p: AugmentParams) -> dict[str, Any]:
    """The image transforms the train loader applies (before resize/normalise), as data."""
    if not p.enabled:
        return {}
    return {
        "random_resized_crop": {"scale": [p.crop_scale_min, 1.0]},
        "horizontal_flip": p.hflip,
        "color_jitter": p.color_jitter,
        "rotation_degrees": p.rotation_degrees,
    }


def audio_policy(p: AugmentParams) -> dict[str, Any]:
    """The waveform augmentations the train loader applies to audio clips."""
    if not p.enabled:
        return {}
    return {"gain_db": p.audio_gain_db, "snr_db": p.audio_snr_db, "shift": p.audio_shift, "random_crop": True}


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    params = settings.params_for(dataset)
    clean_dir = settings.stage_dir("clean", dataset)
    clean = read_parquet(clean_dir / "manifest.parquet", f"clean manifest of {dataset!r}")
    data_version = str(read_json(clean_dir / "report.json", "clean report")["data_version"])
    train = clean[clean["split"] == Split.TRAIN.value].reset_index(drop=True)
    policy = {
        "dataset": dataset,
        "data_version": data_version,
        "mode": "on_the_fly",
        "seed": params.augment.seed,
        "params": dataclasses.asdict(params.augment),
        "image": image_policy(params.augment),
        "audio": audio_policy(params.augment),
        "text": {},  # text augmentations: see the data-quality issue
        "train_rows": len(train),
    }
    out = settings.stage_dir("augmented", dataset)
    with atomic_dir(out) as tmp:
        train.to_parquet(tmp / "manifest.parquet", index=False)
        write_json(tmp / "policy.json", policy)
    return {"dataset": dataset, "data_version": data_version, "train_rows": len(train),
            "policy": str(out / "policy.json")}
