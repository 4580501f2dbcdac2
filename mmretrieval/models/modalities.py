"""One table of the media modalities a model encodes: how it decodes a file, how it encodes the decoded items, and
the letter of their metric names.

Evaluation, training's validation and data, the re-ranker's inputs and embedding all look a modality up here
(:func:`media_modality`) instead of each choosing a loader and an encoder for itself::

    kind = media_modality("audio")
    items = [kind.load(model.config, path) for path in paths]  # decoded once, kept in memory
    vectors = kind.encode(model, items)  # (N, D) unit vectors

``load`` depends only on the model's :class:`~mmretrieval.models.dual_encoder.ModelConfig` (sample rate, clip
length, frames per clip), so training decodes with it before a :class:`RetrievalModel` exists; the encoders need
the model. Decoding raises :class:`~mmretrieval.core.errors.MediaError` (or ``OSError``) for a file that does not
decode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.schema import Modality

if TYPE_CHECKING:
    import numpy as np

    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel


@dataclass(frozen=True)
class MediaModality:
    """How a model takes one media modality."""

    name: str  # the manifest's ``modality`` value
    letter: str  # metric names: ``t2<letter>_*`` (text -> items) and ``<letter>2t_*`` (items -> text)
    load: Callable[[ModelConfig, Path], Any]  # a file -> one decoded item (PIL image, (T,) waveform, VideoClip)
    prepare: Callable[[RetrievalModel, Any], Any]  # a decoded item -> what a batch stacks (images: pixels)
    encode: Callable[[RetrievalModel, list[Any]], np.ndarray]  # decoded items -> (N, D) unit vectors, in batches
    encode_batch: Callable[[RetrievalModel, Any], np.ndarray]  # a stacked batch of prepared items -> (B, D)
    batch_size: int  # items per batch when ``encode`` encodes a list

    def read(self, model: RetrievalModel, path: Path) -> Any:
        """A file as a DataLoader's reader yields it: decoded and prepared, ready to be stacked into a batch."""
        return self.prepare(model, self.load(model.config, path))


def _open_image(config: ModelConfig, path: Path) -> Any:
    from mmretrieval.media.image import open_image

    return open_image(path)


def _load_wave(config: ModelConfig, path: Path) -> Any:
    from mmretrieval.models.dual_encoder import load_wave

    return load_wave(config, path)


def _load_clip(config: ModelConfig, path: Path) -> Any:
    from mmretrieval.models.dual_encoder import load_clip

    return load_clip(config, path)


def _pixels(model: RetrievalModel, image: Any) -> Any:
    return model.transform(image)


def _as_is(model: RetrievalModel, item: Any) -> Any:
    return item


def _encode_images(model: RetrievalModel, images: list[Any]) -> np.ndarray:
    return model.encode_images(images)


def _encode_waves(model: RetrievalModel, waves: list[Any]) -> np.ndarray:
    return model.encode_wave_list(waves)


def _encode_clips(model: RetrievalModel, clips: list[Any]) -> np.ndarray:
    return model.encode_video_list(clips)


def _encode_pixel_batch(model: RetrievalModel, pixels: Any) -> np.ndarray:
    return model.encode_pixels(pixels)


def _encode_wave_batch(model: RetrievalModel, waves: Any) -> np.ndarray:
    return model.encode_waves(waves)


def _encode_clip_batch(model: RetrievalModel, clips: Any) -> np.ndarray:
    return model.encode_video_pixels(clips)[0]


MEDIA_MODALITIES: dict[str, MediaModality] = {m.name: m for m in (
    MediaModality(Modality.IMAGE.value, "i", _open_image, _pixels, _encode_images, _encode_pixel_batch, 64),
    MediaModality(Modality.AUDIO.value, "a", _load_wave, _as_is, _encode_waves, _encode_wave_batch, 64),
    MediaModality(Modality.VIDEO.value, "v", _load_clip, _as_is, _encode_clips, _encode_clip_batch, 8),
)}


def media_modality(name: str) -> MediaModality:
    """The table's entry for ``name``. Raises :class:`ConfigError` naming it when it is not a media modality."""
    try:
        return MEDIA_MODALITIES[name]
    except KeyError:
        raise ConfigError(f"{name!r} is not a media modality; use one of {list(MEDIA_MODALITIES)}") from None
