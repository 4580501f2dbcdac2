"""The ``keyword`` and ``hybrid`` search modes for evaluation: each ranks a gallery for text queries exactly as
serving does (:func:`~mmretrieval.serving.hybrid.search_ids`), on a temporary Milvus Lite collection of the gallery.

A mode is served, and so evaluated, only when the dataset's ``index.search_mode`` names it (what a text query gets
by default). Its ranker builds, per call, a collection in a temporary folder as publish would build one of these
items (:meth:`~mmretrieval.backends.index.MilvusIndex.create`'s schema, the items' vectors centred as evaluation
centres them, their keyword text from ``index.keyword_fields`` by
:func:`~mmretrieval.backends.index.with_keywords`, the ``index`` params' vector index), searches it with the
serving params for the top ``min(largest K, G, 1000)`` per query, then closes it and removes the folder. Each
query's ranking is that top (keyword mode: only the items sharing a word with the query) followed by every other
item in vector order (cosine, ties in gallery order), so full-ranking metrics (mAP, MRR, median rank) are defined.
Items without text are never keyword hits; hybrid search lets their vector part stand in
(:func:`~mmretrieval.serving.hybrid.fuse`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.backends.index import MilvusIndex, with_keywords
from mmretrieval.evaluation.modes import HYBRID, KEYWORD, RankFn, scored_rankings
from mmretrieval.serving.hybrid import MAX_DEPTH, search_ids

if TYPE_CHECKING:
    from mmretrieval.core.params import IndexParams
    from mmretrieval.serving.modes import Gallery, ModeContext

COLLECTION = "mmr_evaluation"  # the temporary collection's name (in its own Milvus Lite file)


def keyword_mode(ctx: ModeContext) -> RankFn | None:
    """BM25 over the items' keyword text, then the rest in vector order; None unless ``index.search_mode`` is
    ``keyword``."""
    return _served(ctx, KEYWORD)


def hybrid_mode(ctx: ModeContext) -> RankFn | None:
    """The vector and keyword lists fused as ``index.hybrid`` says, then the rest in vector order; None unless
    ``index.search_mode`` is ``hybrid``."""
    return _served(ctx, HYBRID)


def _served(ctx: ModeContext, mode: str) -> RankFn | None:
    if ctx.index is None or ctx.index.search_mode != mode:
        return None
    return lambda texts: served_rankings(ctx, mode, texts)


def served_rankings(ctx: ModeContext, mode: str, texts: list[str]) -> list[list[str]]:
    """Per query text, every gallery id best first: the top ``min(max(ctx.ks), G, 1000)`` as ``search_ids`` returns
    them in ``mode`` on a temporary collection of the gallery (:func:`scratch_collection`), then the other items by
    their (centred) cosine to the query. Raises what :func:`~mmretrieval.serving.hybrid.search_ids` raises
    (:class:`~mmretrieval.core.errors.SearchModeUnavailable` on a Milvus Lite without BM25)."""
    from mmretrieval.evaluation.evaluator import centred

    assert ctx.index is not None
    ids = ctx.gallery.ids
    text_vecs, item_vecs = centred(ctx.model.encode_texts(texts), ctx.item_vectors(), ctx.gallery.modality,
                                   ctx.index)
    k = min(len(ids), max(ctx.ks), MAX_DEPTH)
    with scratch_collection(ctx.gallery, item_vecs, ctx.index, ctx.ref.version) as ix:
        tops = search_ids(ix, COLLECTION, ctx.index, mode, text_vecs, texts, k)
    by_vector = scored_rankings(text_vecs @ item_vecs.T, ids)
    out = []
    for top, rest in zip(tops, by_vector, strict=True):
        seen = set(top)
        out.append(top + [i for i in rest if i not in seen])
    return out


@contextlib.contextmanager
def scratch_collection(gallery: Gallery, vectors: np.ndarray, params: IndexParams, version: str
                       ) -> Iterator[MilvusIndex]:
    """An open Milvus Lite index in a temporary folder holding collection :data:`COLLECTION`: the ``gallery``'s
    items with their (G, D) ``vectors`` (as the collection stores them: centred where publish centres), keyword
    text where Milvus has BM25 (as publish fills it), indexed and loaded with ``params``; closed and removed on
    exit. Raises :class:`~mmretrieval.core.errors.IndexStoreError` for a row Milvus refuses."""
    rows = gallery_rows(gallery, vectors, version)
    with tempfile.TemporaryDirectory(prefix="mmr-modes-") as folder, \
            MilvusIndex(str(Path(folder) / "evaluation.db")) as ix:
        ix.create(COLLECTION, int(vectors.shape[1]), {})
        stream = with_keywords(rows, params.keyword_fields) if ix.has_keywords(COLLECTION) else rows
        for _ in ix.insert(COLLECTION, stream):
            pass
        ix.build_index(COLLECTION, params)
        ix.load(COLLECTION)
        yield ix


def gallery_rows(gallery: Gallery, vectors: np.ndarray, version: str) -> list[dict[str, Any]]:
    """The collection rows of the gallery's items (publish's fields: id, modality, vector, text, path, label,
    metadata as a dict, model version; no data version), their manifest values where they have them, else empty."""
    return [{"id": str(item), "modality": gallery.modality, "vector": [float(x) for x in vector],
             "text": _string(row.get("text")), "path": _string(row.get("path")), "label": _string(row.get("label")),
             "metadata": _mapping(row.get("metadata")), "model_version": str(version), "data_version": ""}
            for item, vector, row in zip(gallery.ids, vectors, gallery.rows, strict=True)]


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""  # a missing manifest value may be None or NaN


def _mapping(value: Any) -> dict[str, Any]:
    """A manifest row's metadata as a dict: a dict as it is, a JSON object string parsed, anything else empty."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        with contextlib.suppress(ValueError):
            parsed = json.loads(value)
            return parsed if isinstance(parsed, dict) else {}
    return {}
