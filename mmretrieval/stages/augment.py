"""Stage ``augment``: the training split and the augmentation policy applied to it.

Images and audio are augmented on the fly by the training data loader (a new random view every epoch), so this
stage writes ``data/augmented/<dataset>/manifest.parquet`` (train rows only) and ``policy.json`` (what the loader
applies, with its seed); the policy is logged with the model's MLflow run. Text is augmented here, materialised:
each caption gets ``text_variants`` copies with random word deletion, swap or insertion (EDA without synonyms: no
offline word list is packaged), stored in the ``aug_text`` column, seeded by (seed, item id).
"""

from __future__ import annotations

import random
from typing import Any

from mmretrieval.core.contracts import AugmentResult
from mmretrieval.core.io import atomic_dir, write_json
from mmretrieval.core.layout import read_clean
from mmretrieval.core.params import AugmentParams
from mmretrieval.core.schema import Split, join_captions, split_captions
from mmretrieval.core.settings import Settings, get_settings


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
    return {"gain_db": p.audio_gain_db, "snr_db": p.audio_snr_db, "shift": p.audio_shift, "speed": p.audio_speed,
            "freq_mask": p.audio_freq_mask, "time_mask": p.audio_time_mask, "random_crop": True}


TEXT_OPS = ("delete", "swap", "insert")


def augment_caption(text: str, rng: random.Random, share: float) -> str:
    """One random operation on about ``share`` of the words; captions under three words stay as they are."""
    words = text.split()
    if len(words) < 3:
        return text
    n = max(1, round(share * len(words)))
    op = rng.choice(TEXT_OPS)
    if op == "delete":
        for _ in range(min(n, len(words) - 1)):
            words.pop(rng.randrange(len(words)))
    elif op == "swap":
        for _ in range(n):
            i, j = rng.randrange(len(words)), rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
    else:  # insert a copy of a random word of the caption at a random place
        for _ in range(n):
            words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


def text_variants(row_id: str, captions: list[str], p: AugmentParams) -> list[str]:
    rng = random.Random(f"{p.seed}:{row_id}")
    out = []
    for c in captions:
        for _ in range(p.text_variants):
            v = augment_caption(c, rng, p.text_word_share)
            if v != c and v not in out:
                out.append(v)
    return out


def run(dataset: str, settings: Settings | None = None) -> AugmentResult:
    settings = settings or get_settings()
    params = settings.params_for(dataset)
    layout = settings.layout(dataset)
    source = read_clean(layout)
    clean, data_version = source.frame, source.data_version
    train = clean[clean["split"] == Split.TRAIN.value].reset_index(drop=True)
    p = params.augment
    train["aug_text"] = [join_captions(text_variants(i, split_captions(t), p)) if p.enabled else ""
                         for i, t in zip(train["id"], train["text"], strict=True)]
    policy = {
        "dataset": dataset,
        "data_version": data_version,
        "mode": "on_the_fly",
        "seed": params.augment.seed,
        "params": params.augment.model_dump(),
        "image": image_policy(params.augment),
        "audio": audio_policy(params.augment),
        "text": {"variants": p.text_variants, "word_share": p.text_word_share, "ops": list(TEXT_OPS),
                 "materialized_captions": int(sum(len(split_captions(t)) for t in train["aug_text"]))}
        if p.enabled else {},
        "train_rows": len(train),
    }
    with atomic_dir(layout.augmented) as tmp:  # files named as in the layout, the folder renamed into place
        train.to_parquet(tmp / layout.training_manifest.name, index=False)
        write_json(tmp / layout.augmentation_policy.name, policy)
    return AugmentResult(dataset, data_version, len(train), str(layout.augmentation_policy))
