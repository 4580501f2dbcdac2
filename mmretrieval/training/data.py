"""Training data: the trainable items, their caption features, and the batches each modality's loader yields.

Images reach the model in one of two forms:

* **cached features** when the image backbone is pretrained and frozen (the default ``efficientnet_lite0``, or a
  frozen ``st:`` CLIP): every training image is decoded and run through the backbone once per *view* (the
  evaluation crop, and its mirror image when the augmentation policy flips), and each draw picks one view at
  random. An epoch then costs only the projection heads: seconds on a CPU;
* **pixels** through the augmentation transforms when the backbone trains (from scratch, or with tuned top blocks).

Audio clips are decoded once and augmented (speed, crop, gain, noise, shift) every time they are drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmretrieval.core.schema import Modality, split_captions
from mmretrieval.models.modalities import MEDIA_MODALITIES, media_modality

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.core.params import TrainParams
    from mmretrieval.models.dual_encoder import DualEncoder, ModelConfig
    from mmretrieval.models.towers import TextEncoder


@dataclass(frozen=True)
class TrainItems:
    """The media items (image, audio, video) of the training split that have captions or labels, in manifest
    order."""

    ids: list[str]
    modalities: list[str]
    media: list[str]  # file relative to the clean folder
    captions: list[list[str]]  # captions (a labelled item without text: its label), plus materialised text variants
    labels: list[str]  # "" when unlabelled
    audio_tracks: list[bool]  # a video whose clean metadata records an audio track (``video.has_audio``)
    digests: tuple[str, ...] = ()  # the clean media file's recorded sha256 (``media_sha256``), "" when none

    def digest(self, i: int) -> str:
        """Item ``i``'s recorded media sha256, ``""`` when the manifest records none."""
        return self.digests[i] if i < len(self.digests) else ""

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> TrainItems:
        from mmretrieval.core.integrity import MEDIA_SHA256
        from mmretrieval.core.schema import captions_of

        ids, modalities, media, caps, labels, tracks, digests = [], [], [], [], [], [], []
        for _, row in frame[frame["modality"].isin(list(MEDIA_MODALITIES))].iterrows():
            c = captions_of(row)
            c += [a for a in split_captions(row.get("aug_text", "")) if a not in c]  # materialised text augmentation
            if c:
                ids.append(row["id"])
                modalities.append(row["modality"])
                media.append(row["media"])
                caps.append(c)
                labels.append(str(row["label"]))
                tracks.append(row["modality"] == Modality.VIDEO.value and has_audio_track(row.get("metadata", "")))
                digest = row.get(MEDIA_SHA256, "")
                digests.append(digest if isinstance(digest, str) else "")
        return cls(ids, modalities, media, caps, labels, tracks, tuple(digests))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def present(self) -> list[str]:
        return sorted(set(self.modalities))

    def members(self, modality: str) -> list[int]:
        return [i for i, m in enumerate(self.modalities) if m == modality]

    def label_ids(self) -> list[int]:
        """Each item's label class index, -1 when unlabelled."""
        index = {lab: k for k, lab in enumerate(sorted(set(self.labels) - {""}))}
        return [index.get(lab, -1) for lab in self.labels]


def has_audio_track(metadata: Any) -> bool:
    """Whether a clean video row's ``metadata`` JSON records an audio track (``{"video": {"has_audio": true}}``)."""
    import json

    if not isinstance(metadata, str) or not metadata:
        return False
    try:
        return bool(json.loads(metadata).get("video", {}).get("has_audio", False))
    except (ValueError, AttributeError):
        return False


class CaptionBank:
    """Every training caption once; with a frozen text tower their features are computed once, up front."""

    def __init__(self, captions: list[list[str]], text: TextEncoder, device: str) -> None:
        self.vocab = sorted({c for cs in captions for c in cs})
        self.index = {c: i for i, c in enumerate(self.vocab)}
        self.captions = captions
        self.text = text
        self.cached = self._encoded(text).to(device) if text.frozen else None  # (V, text_dim)

    def _encoded(self, text: TextEncoder, chunk: int = 1024) -> torch.Tensor:
        """(V, text_dim) features of the vocabulary, in chunks (progress lines for a large one)."""
        from mmretrieval.core.progress import progress

        starts = progress(range(0, len(self.vocab), chunk), "caption features", total=len(self.vocab),
                          unit="captions", size=lambda s: len(self.vocab[s:s + chunk]))
        parts = [text.encode(self.vocab[s:s + chunk]) for s in starts]
        return torch.cat(parts) if parts else text.encode([])

    def __len__(self) -> int:
        return len(self.vocab)

    def draw(self, items: list[int], rng: Any, device: str) -> torch.Tensor:
        """(B,) caption indices: one caption of each item, chosen by ``rng`` (a ``random.Random``)."""
        return torch.tensor([self.index[rng.choice(self.captions[i])] for i in items], device=device)

    def features(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """(B,) caption indices -> (B, text_dim): cached when frozen, else a forward pass through the tuned tower."""
        if self.cached is not None:
            return self.cached[caption_ids]
        return self.text.forward([self.vocab[j] for j in caption_ids.tolist()])


class MediaDataset(Dataset):  # type: ignore[type-arg]
    """Pixels or waveforms of one modality's items; decoded once, augmented every time they are drawn."""

    def __init__(self, items: TrainItems, members: list[int], clean_dir: Path, config: ModelConfig,
                 transform: Callable[[Any], torch.Tensor], audio_policy: dict[str, Any], seed: int) -> None:
        self.items, self.members, self.clean_dir, self.config = items, members, clean_dir, config
        self.transform, self.audio_policy, self.seed = transform, audio_policy, seed
        self.audio_len = int(config.audio_sample_rate * config.audio_seconds)
        self.cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, k: int) -> tuple[Any, int]:
        i = self.members[k]
        modality = self.items.modalities[i]
        if modality == Modality.AUDIO.value:
            return self._augmented_wave(i), i
        if i not in self.cache:  # decoded as the model takes the modality (mmretrieval.models.modalities)
            self.cache[i] = media_modality(modality).load(self.config, self.clean_dir / self.items.media[i])
        if modality == Modality.IMAGE.value:
            return self.transform(self.cache[i]), i
        return self.cache[i], i  # a clip through a trained backbone: frames decoded once, not augmented

    def _augmented_wave(self, i: int) -> torch.Tensor:
        """Item ``i``'s waveform: decoded once at up to four times the clip length, then sped up or slowed down,
        cropped and augmented (gain, noise, shift) anew each draw, as the audio policy says."""
        from mmretrieval.media.audio import augment_wave, change_speed, fit_length, load_audio

        if i not in self.cache:
            self.cache[i] = load_audio(self.clean_dir / self.items.media[i], self.config.audio_sample_rate,
                                       self.config.audio_seconds * 4)
        wave, aug = self.cache[i], self.audio_policy
        rng = np.random.default_rng((self.seed, i, int(torch.randint(0, 2**31, (1,)).item())))
        if aug:
            wave = change_speed(wave, 1 + rng.uniform(-1, 1) * aug.get("speed", 0.0))
            offset = int(rng.integers(0, max(1, len(wave) - self.audio_len + 1)))
            wave = augment_wave(wave[offset:offset + self.audio_len], rng, aug["gain_db"], aug["snr_db"], aug["shift"])
        return torch.from_numpy(np.ascontiguousarray(fit_length(wave, self.audio_len)))


class FeatureDataset(Dataset):  # type: ignore[type-arg]
    """Cached backbone features (views, items, width) of one modality's items; each draw picks a random view.

    An item with several captions is drawn up to ``draws`` times per epoch (each draw with a random caption;
    ``train.caption_draws``). One draw per epoch is the field's usual epoch; five made a photo with five captions
    meet about all of them each epoch, but five times the steps overfit a frozen backbone's heads (docs/benchmarks.md,
    "The image side").
    """

    def __init__(self, features: torch.Tensor, members: list[int], captions: list[list[str]], draws: int = 1) -> None:
        if features.shape[1] != len(members):
            raise ValueError(f"{features.shape[1]} feature rows for {len(members)} items")
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}")
        self.features = features
        self.rows = [(pos, i) for pos, i in enumerate(members) for _ in range(min(len(captions[i]), draws))]

    @property
    def members(self) -> list[int]:
        """The item of each dataset row (items with several captions repeat)."""
        return [i for _, i in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        pos, i = self.rows[k]
        view = int(torch.randint(0, self.features.shape[0], (1,)).item())
        return self.features[view, pos], i


@torch.no_grad()
def backbone_features(net: DualEncoder, images: list[Any], transform: Callable[[Any], torch.Tensor], device: str,
                      mirror: bool = False, batch_size: int = 32, report: bool = True) -> torch.Tensor:
    """(N,) PIL images -> (N, width) features of the (frozen) image backbone on CPU, each image preprocessed by
    ``transform`` and, with ``mirror``, flipped left-right first. ``report``: progress lines (off when the caller
    reports its own)."""
    from mmretrieval.core.progress import progress

    parts = []
    starts: Any = range(0, len(images), batch_size)
    if report:
        starts = progress(starts, "image backbone features" + (" (mirrored)" if mirror else ""), total=len(images),
                          unit="images", size=lambda start: len(images[start:start + batch_size]))
    for start in starts:
        pixels = torch.stack([transform(im) for im in images[start:start + batch_size]]).to(device)
        if mirror:
            pixels = pixels.flip(-1)
        with torch.autocast(device_type="cuda", enabled=device.startswith("cuda")):
            parts.append(net.image_features(pixels).float().cpu())
    width = parts[0].shape[1] if parts else 0
    return torch.cat(parts) if parts else torch.zeros(0, width)


FEATURES_FORMAT = 1  # bump when what a feature entry holds, or how items are decoded into it, changes


class FeatureCache:
    """Backbone features per item in the item cache (``var/cache/<kind>/``), keyed by the clean media file's digest
    (its recorded ``media_sha256``, or its sha256 when none is recorded) and by the frozen backbone's identity (its
    name and a checksum of its weights), the decoding settings and the device type (``settings``). ``root`` None:
    nothing is cached, but the bytes of every item read are still checked against the recorded digest."""

    def __init__(self, root: Path | None, kind: str, net: DualEncoder, backbone: Any, settings: dict[str, Any],
                 device: str) -> None:
        from mmretrieval.core.array_cache import ArrayCache
        from mmretrieval.core.cache import fingerprint
        from mmretrieval.models.checksum import weights_checksum

        identity = {"format": FEATURES_FORMAT, "backbone": net.config.image_backbone,
                    "weights_sha256": weights_checksum(backbone), "device": device.split(":")[0]} | settings
        self.cache = ArrayCache(root, kind, fingerprint(identity)) if root is not None else None
        self.kind = kind

    def split(self, items: TrainItems, members: list[int], clean_dir: Path, needs: tuple[str, ...]
              ) -> tuple[dict[int, dict[str, np.ndarray]], list[int], list[str]]:
        """(entries found by position in ``members`` (each holding every array of ``needs``), the positions to
        compute (their files' bytes checked), each position's item digest)."""
        from mmretrieval.core.integrity import item_digest, verify_file

        digests = [item_digest(items.modalities[i], items.digest(i) or verify_file(clean_dir / items.media[i]))
                   for i in members]
        found: dict[int, dict[str, np.ndarray]] = {}
        for pos, digest in enumerate(digests):
            entry = self.cache.load(self.cache.key(digest)) if self.cache is not None else None
            if entry is not None and all(name in entry for name in needs):
                found[pos] = entry
        misses = [pos for pos in range(len(members)) if pos not in found]
        for pos in misses:
            if items.digest(members[pos]):
                verify_file(clean_dir / items.media[members[pos]], items.digest(members[pos]))
        return found, misses, digests

    def save(self, digest: str, **arrays: np.ndarray) -> None:
        if self.cache is not None:
            self.cache.save(self.cache.key(digest), **arrays)

    def counts(self, found: int, computed: int) -> dict[str, int]:
        import logging

        logging.getLogger(__name__).info("train %s: %d item(s) reused from the item cache, %d computed", self.kind,
                                         found, computed)
        return {"reused": found, "computed": computed}


def cached_image_features(net: DualEncoder, items: TrainItems, members: list[int], clean_dir: Path,
                          transform: Callable[[Any], torch.Tensor], mirror: bool, device: str,
                          cache_root: Path | None = None, counts: dict[str, dict[str, int]] | None = None
                          ) -> torch.Tensor:
    """(views, len(members), width): the evaluation view, and its mirror image when ``mirror``. With ``cache_root``
    (``layout.item_cache``) each item's views are kept in the item cache (:class:`FeatureCache`: media digest,
    backbone weights, transform) and only new items are decoded; ``counts["image"]`` gets the reused and computed
    items. Raises :class:`~mmretrieval.core.errors.DataChangedError` for a file whose bytes changed."""
    from mmretrieval.core.progress import progress

    views = ("eval", "mirror") if mirror else ("eval",)
    cache = FeatureCache(cache_root, "image-features", net, net.image_backbone,
                         {"transform": repr(transform), "image_size": net.config.image_size}, device)
    found, misses, digests = cache.split(items, members, clean_dir, views)
    out = _Views(views, len(members))
    for pos, entry in found.items():
        out.put(pos, {name: torch.from_numpy(entry[name]) for name in views})
    load = media_modality(Modality.IMAGE.value).load
    batches = [misses[k:k + DECODE_CHUNK] for k in range(0, len(misses), DECODE_CHUNK)]
    chunks = progress(batches, "train image features", total=len(misses), unit="images",
                      size=len)
    for chunk in chunks:  # decoded a chunk at a time: memory holds one chunk of pictures, not the split's
        images = [load(net.config, clean_dir / items.media[members[pos]]) for pos in chunk]
        computed = {name: backbone_features(net, images, transform, device, mirror=name == "mirror", report=False)
                    for name in views}
        for j, pos in enumerate(chunk):
            out.put(pos, {name: computed[name][j] for name in views})
            cache.save(digests[pos], **{name: computed[name][j].numpy() for name in views})
    if counts is not None:
        counts["image"] = cache.counts(len(found), len(misses))
    return out.tensor()


DECODE_CHUNK = 256  # training images decoded at once for the frozen backbone's features


class _Views:
    """The (views, N, width) feature tensor, allocated when the first item's width is known."""

    def __init__(self, views: tuple[str, ...], n: int) -> None:
        self.views, self.n, self.out = views, n, None

    def put(self, pos: int, arrays: dict[str, torch.Tensor]) -> None:
        if self.out is None:
            self.out = torch.zeros(len(self.views), self.n, arrays[self.views[0]].shape[-1])
        for v, name in enumerate(self.views):
            self.out[v, pos] = arrays[name]

    def tensor(self) -> torch.Tensor:
        return self.out if self.out is not None else torch.zeros(len(self.views), self.n, 0)


class VideoFeatureDataset(FeatureDataset):
    """Cached frame features of clips with their audio tracks: each draw is a :class:`VideoClip` whose ``pixels`` field
    holds the (K, width) frame features (``times`` left empty)."""

    def __init__(self, features: torch.Tensor, waves: torch.Tensor, audio: torch.Tensor, members: list[int],
                 captions: list[list[str]], draws: int = 1) -> None:
        super().__init__(features, members, captions, draws)
        self.waves, self.audio = waves, audio

    def __getitem__(self, k: int) -> tuple[Any, int]:  # type: ignore[override]
        from mmretrieval.models.dual_encoder import VideoClip

        pos, i = self.rows[k]
        return VideoClip(self.features[0, pos], torch.zeros(0), self.waves[pos], self.audio[pos]), i


@torch.no_grad()
def cached_video_features(net: DualEncoder, items: TrainItems, members: list[int], clean_dir: Path, device: str,
                          batch_size: int = 8, cache_root: Path | None = None,
                          counts: dict[str, dict[str, int]] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, len(members), K, width): each clip's K frames through the frozen backbone once (one view: a mirrored
    clip would swap left and right, which captions may name); with them the clips' audio tracks (len(members), T)
    and whether each has one (len(members),) bool (see :meth:`RetrievalModel.load_track`). With ``cache_root`` each
    clip's entry is kept in the item cache (:class:`FeatureCache`) and only new clips are decoded; ``counts["video"]``
    gets the reused and computed clips. Raises :class:`~mmretrieval.core.errors.DataChangedError`."""
    from mmretrieval.core.progress import progress

    c = net.config
    cache = FeatureCache(cache_root, "video-features", net, net.image_backbone,
                         {"image_size": c.image_size, "frames": c.video_frames, "rate": c.audio_sample_rate,
                          "seconds": c.audio_seconds, "video_audio": c.video_audio}, device)
    names = ("frames", "wave", "audio")
    found, misses, digests = cache.split(items, members, clean_dir, names)
    load = media_modality(Modality.VIDEO.value).load  # the clips as embedding and evaluation decode them
    entries: dict[int, dict[str, Any]] = {pos: {n: torch.from_numpy(e[n]) for n in names} for pos, e in found.items()}
    chunks = progress(range(0, len(misses), batch_size), "train video features", total=len(misses), unit="clips",
                      size=lambda start: len(misses[start:start + batch_size]))
    for start in chunks:
        chunk = misses[start:start + batch_size]
        clips = [load(net.config, clean_dir / items.media[members[pos]]) for pos in chunk]
        pixels = torch.stack([clip.pixels for clip in clips]).to(device)
        with torch.autocast(device_type="cuda", enabled=device.startswith("cuda")):
            feats = net.frame_features(pixels).float().cpu()
        for pos, clip, f in zip(chunk, clips, feats, strict=True):
            entries[pos] = {"frames": f, "wave": clip.wave, "audio": clip.audio}
            cache.save(digests[pos], **{n: torch.as_tensor(entries[pos][n]).numpy() for n in names})
    if counts is not None:
        counts["video"] = cache.counts(len(found), len(misses))
    ordered = [entries[pos] for pos in range(len(members))]
    frames, waves, audio = ([torch.as_tensor(e[n]) for e in ordered] for n in names)
    return torch.stack(frames)[None], torch.stack(waves), torch.stack(audio)


def sampler(items: TrainItems, members: list[int], balance_labels: bool, gen: torch.Generator
            ) -> torch.utils.data.Sampler:  # type: ignore[type-arg]
    """Every label class weighs as much as one unlabelled item, so a few captioned photos are not drowned by
    thousands of class-labelled items (and classes are balanced among themselves). An already balanced set is
    drawn as a permutation, so every item is seen each epoch (drawing with replacement leaves ~37 % out)."""
    counts: dict[str, int] = {}
    for i in members:
        counts[items.labels[i]] = counts.get(items.labels[i], 0) + 1
    weights = [1.0 / counts[items.labels[i]] if items.labels[i] else 1.0 for i in members]
    if balance_labels and len(set(weights)) > 1:
        return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(members), generator=gen)
    return torch.utils.data.RandomSampler(range(len(members)), generator=gen)


def loader(dataset: Dataset, items: TrainItems, members: list[int], p: TrainParams,  # type: ignore[type-arg]
           gen: torch.Generator, workers: int) -> DataLoader:  # type: ignore[type-arg]
    return DataLoader(dataset, batch_size=min(p.batch_size, len(members)),
                      sampler=sampler(items, members, p.balance_labels, gen), drop_last=len(members) > p.batch_size,
                      num_workers=workers, persistent_workers=workers > 0)


def round_robin(loaders: dict[str, DataLoader]) -> Iterator[tuple[str, Any]]:  # type: ignore[type-arg]
    """One pass over every loader, alternating between modalities: each batch holds one modality."""
    iterators = {m: iter(dl) for m, dl in loaders.items()}
    while iterators:
        for m in list(iterators):
            try:
                yield m, next(iterators[m])
            except StopIteration:
                del iterators[m]
