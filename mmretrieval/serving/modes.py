"""How serving ranks a gallery of items for text queries, one :data:`~mmretrieval.evaluation.modes.RankFn` per
search mode, so that evaluation scores what a search returns (:mod:`mmretrieval.evaluation.modes` names and scores
them; ``mmr evaluate`` reports them side by side).

``MODES`` maps a mode's name to a builder: given a :class:`ModeContext` (the model version, its loaded dual
encoder, one modality's decoded items) it returns the mode's ranker, or None when that version does not serve the
mode for those items. Built in:

- ``vector``: the dual encoder alone, cosines of the centred vectors (as the collection is centred on its items);
- ``reranked``: the dual encoder's top ``max(rerank.depth, largest K)`` re-scored by the version's re-ranker when it
  passed its gate and re-ranks this modality, as :meth:`RetrievalClient.search` does by default (regions projected
  from the items' tower maps as the embed stage stores them; the rest below, in dual order).

- ``keyword`` and ``hybrid`` (:mod:`mmretrieval.serving.keyword_modes`): where ``index.search_mode`` names the
  mode (what serving answers a text query with), BM25 or the fused lists as
  :func:`~mmretrieval.serving.hybrid.search_ids` returns them on a temporary Milvus Lite collection of the gallery,
  the rest below in vector order.

A new mode is one more entry: ``MODES[name] = build`` with ``build(ctx)`` returning None when the dataset does not
search that way, else a function of the query texts that returns each query's item ids best first
(``ctx.gallery.rows`` carries the items' manifest rows: text, label, metadata).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.evaluation.modes import HYBRID, KEYWORD, RERANKED, VECTOR, RankFn, scored_rankings
from mmretrieval.serving.keyword_modes import hybrid_mode, keyword_mode

if TYPE_CHECKING:
    import torch

    from mmretrieval.backends.tracking import ModelRef
    from mmretrieval.core.params import IndexParams, RerankParams
    from mmretrieval.core.settings import Settings
    from mmretrieval.models.dual_encoder import RetrievalModel


@dataclass(frozen=True)
class Gallery:
    """One modality's evaluated items: ids, decoded media (as :attr:`MediaModality.load` gives them) and manifest
    rows (dicts), in the same order."""

    modality: str
    ids: list[str]
    media: list[Any]
    rows: list[dict[str, Any]]


@dataclass
class ModeContext:
    """What a mode builder may use: the version ``ref`` and its loaded ``model``, the ``gallery``, the dataset's
    ``index`` (centring) and ``rerank`` params, the metric cut-offs ``ks``; item vectors are computed once."""

    settings: Settings
    ref: ModelRef
    model: RetrievalModel
    gallery: Gallery
    index: IndexParams | None
    rerank: RerankParams
    ks: tuple[int, ...] = (1, 5, 10)
    _items: np.ndarray | None = field(default=None, repr=False)

    def item_vectors(self) -> np.ndarray:
        """(G, D) uncentred unit vectors of the gallery's items (encoded on first use)."""
        if self._items is None:
            from mmretrieval.models.modalities import media_modality

            self._items = media_modality(self.gallery.modality).encode(self.model, self.gallery.media)
        return self._items

    def dual_scores(self, texts: list[str]) -> np.ndarray:
        """(Q, G) cosines of the query texts and the gallery's items, centred as evaluation and the collection centre
        them (:func:`~mmretrieval.evaluation.evaluator.centred`)."""
        from mmretrieval.evaluation.evaluator import centred

        text_vecs, item_vecs = centred(self.model.encode_texts(texts), self.item_vectors(), self.gallery.modality,
                                       self.index)
        return text_vecs @ item_vecs.T


def vector_mode(ctx: ModeContext) -> RankFn:
    """The dual encoder alone: every item by its cosine to the query."""
    return lambda texts: scored_rankings(ctx.dual_scores(texts), ctx.gallery.ids)


def reranked_mode(ctx: ModeContext) -> RankFn | None:
    """The dual encoder's top candidates re-scored by the version's gated re-ranker; None when the version has no
    re-ranker that passed its gate, or one for another modality."""
    from mmretrieval.serving.reranking import reranker_config, serving_reranker

    config = reranker_config(ctx.settings, ctx.ref)
    if config is None or config.get("modality", "image") != ctx.gallery.modality:
        return None
    net = serving_reranker(ctx.settings, ctx.ref)
    regions = item_regions(ctx.model, net, ctx.gallery)
    depth = min(len(ctx.gallery.ids), max(ctx.rerank.depth, *ctx.ks))

    def rank(texts: list[str]) -> list[list[str]]:
        return rerank_rankings(net, ctx.model, texts, ctx.dual_scores(texts), regions, depth, ctx.gallery.ids)

    return rank


def item_regions(model: RetrievalModel, net: Any, gallery: Gallery, batch_size: int = 32) -> torch.Tensor:
    """(G, R, d) float16 regions of the gallery's items as the embed stage stores them
    (:class:`~mmretrieval.serving.reranking.RegionWriter`): the tower's maps of the prepared items, projected by the
    re-ranker."""
    import torch

    from mmretrieval.models.modalities import media_modality

    kind = media_modality(gallery.modality)
    parts = []
    for start in range(0, len(gallery.media), batch_size):
        batch = torch.stack([torch.as_tensor(kind.prepare(model, item)) for item in
                             gallery.media[start:start + batch_size]])
        with torch.no_grad():
            parts.append(net.project_regions(model.item_maps(gallery.modality, batch).float()).half())
    return torch.cat(parts)


def rerank_rankings(net: Any, model: RetrievalModel, texts: list[str], dual: np.ndarray, regions: torch.Tensor,
                    depth: int, item_ids: list[str]) -> list[list[str]]:
    """Per query: its top ``depth`` items by the (Q, G) ``dual`` scores re-scored by ``net`` (one query against its
    candidates, as a search re-ranks), then the other items in dual order. Returns ids, best first."""
    import torch

    from mmretrieval.models.reranker import token_states

    tokens, mask = token_states(model.text.model, texts)
    order = np.argsort(-dual, axis=1, kind="stable")
    ids = np.asarray(item_ids, dtype=object)
    out = []
    for q in range(len(texts)):
        top = order[q, :depth]
        with torch.no_grad():
            scores = net.score_candidates(tokens[q], mask[q], regions[torch.from_numpy(top)].float(),
                                          torch.from_numpy(dual[q, top]).float())
        best = top[torch.argsort(scores, descending=True, stable=True).numpy()]
        out.append(list(ids[best]) + list(ids[order[q, depth:]]))
    return out


ModeBuilder = Callable[[ModeContext], "RankFn | None"]
MODES: dict[str, ModeBuilder] = {VECTOR: vector_mode, RERANKED: reranked_mode, KEYWORD: keyword_mode,
                                 HYBRID: hybrid_mode}  # in report order


def rankers(ctx: ModeContext, modes: list[str] | None = None) -> dict[str, RankFn]:
    """The rankers of the ``modes`` (default: every mode of :data:`MODES`) that ``ctx``'s version serves for its
    gallery, in :data:`MODES` order."""
    out: dict[str, RankFn] = {}
    for name, build in MODES.items():
        if modes is None or name in modes:
            ranker = build(ctx)
            if ranker is not None:
                out[name] = ranker
    return out
