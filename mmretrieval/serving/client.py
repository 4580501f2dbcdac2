"""The query client: alias -> collection -> the model version that built it -> encode -> search -> typed hits.

Query vectors of a modality the collection was centred on (``mmr.centre``) are centred on the same corpus mean.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.backends import tracking
from mmretrieval.backends.index import SERVING, MilvusIndex
from mmretrieval.core.errors import CalibrationError, IndexStoreError, MediaError, MMRError, QueryError
from mmretrieval.core.schema import MODALITIES
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.evaluation.calibration import PROPERTY as CALIBRATION_PROPERTY
from mmretrieval.evaluation.calibration import Calibration, decide
from mmretrieval.evaluation.centring import PROPERTY as CENTRE_PROPERTY
from mmretrieval.evaluation.centring import Centring
from mmretrieval.media.text import normalize_text
from mmretrieval.serving import hybrid, loading
from mmretrieval.serving.filters import build_filter

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from mmretrieval.models.dual_encoder import RetrievalModel

log = logging.getLogger(__name__)
MAX_K = 1000
FUSIONS = ("vector", "late")
FUSION_DEPTH = 4  # late fusion: candidates per query part, as a multiple of k
MAX_TEXT = 2000
MAX_TEXT_RAW = 4 * MAX_TEXT  # characters before normalisation (invisible ones included)
ImageInput = "str | Path | bytes | Image.Image"


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    score: float
    modality: str
    path: str
    text: str
    label: str
    collection: str
    model_version: str
    data_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    best_time_s: float | None = None  # video hits: time (seconds) of the sampled frame nearest to the query
    dual_score: float | None = None  # with re-ranking: the dual encoder's cosine (``score`` is the re-ranker's)
    confidence: float | None = None  # probability that the hit is relevant (the collection's score calibration);
    # None without one (docs/serving.md#no-good-match)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass(frozen=True)
class Query:
    """A search request whose arguments passed :meth:`checked` (their meaning: :meth:`RetrievalClient.search`)."""

    text: str | None
    image: Any
    audio: Any
    k: int
    modality: str | None
    filter: str
    labels: Sequence[str]
    where: Mapping[str, str] | None
    weights: Mapping[str, float]
    fusion: str
    rerank: int | None
    mode: str | None = None  # vector | keyword | hybrid (mmretrieval.serving.hybrid); None: index.search_mode

    @classmethod
    def checked(cls, text: str | None, image: Any, audio: Any, *, k: Any, modality: str | None, filter: str,
                labels: Sequence[str], where: Mapping[str, str] | None, weights: Mapping[str, float] | None,
                fusion: str, rerank: Any, mode: str | None = None) -> Query:
        """The request with ``k`` and ``rerank`` as ints and the text normalised
        (:func:`~mmretrieval.media.text.normalize_text`); raises :class:`QueryError` naming
        the first bad argument and its value (whether a rerank depth suits k and the model is checked at search)."""
        if not _whole(k) or not 1 <= k <= MAX_K:
            raise QueryError(f"k must be a whole number between 1 and {MAX_K}, got {k!r}")
        if rerank is not None and not _whole(rerank):
            raise QueryError(f"rerank must be a whole number (0: off), got {rerank!r}")
        if isinstance(labels, (str, bytes)):
            raise QueryError(f"labels must be a list of labels, got the single string {labels!r}: wrap it in a list")
        for part, weight in (weights or {}).items():
            if part not in ("text", "image", "audio") or not _finite(weight):
                raise QueryError(f"weights takes finite numbers for 'text', 'image' and 'audio'; got {part!r}: "
                                 f"{weight!r}")
        if modality is not None and modality not in MODALITIES:
            raise QueryError(f"unknown modality {modality!r}; use one of {list(MODALITIES)}")
        if text is not None:  # normalised as captions are (mmretrieval.media.text): what displays is what is meant
            if not isinstance(text, str):
                raise QueryError(f"the text query must be a string, got {type(text).__name__}")
            if len(text) > MAX_TEXT_RAW:  # before normalising, so a huge text costs nothing
                raise QueryError(f"the text query has {len(text)} characters; the limit is {MAX_TEXT}")
            text = normalize_text(text)
            if not text:
                raise QueryError("the text query is empty (nothing visible once control and invisible characters "
                                 "are removed)")
            if len(text) > MAX_TEXT:
                raise QueryError(f"the text query has {len(text)} characters; the limit is {MAX_TEXT}")
        if text is None and image is None and audio is None:
            raise QueryError("give a text, image or audio query")
        if fusion not in FUSIONS:
            raise QueryError(f"unknown fusion {fusion!r}; use one of {list(FUSIONS)}")
        if mode is not None:
            check_query_mode(mode, text, rerank)
        return cls(text, image, audio, int(k), modality, filter, labels, where, weights or {}, fusion,
                   None if rerank is None else int(rerank), mode)

    def restriction(self, modality: str | None) -> str:
        """The Milvus filter expression of this request's restrictions, with ``modality`` as the modality one."""
        return build_filter(modality, self.filter, self.labels, self.where)


class SearchHits(list):  # noqa: FURB189 - a list that keeps list's API for callers of search()
    """The hits of a search, best first (a ``list`` of :class:`Hit`), and whether none of them is a good match.

    ``no_good_match``: the best hit's ``confidence`` is below ``min_confidence`` (False when no hit has a
    confidence: an uncalibrated collection, a multi-part query).
    """

    def __init__(self, hits: Sequence[Hit] = (), no_good_match: bool = False, min_confidence: float = 0.0) -> None:
        super().__init__(hits)
        self.no_good_match, self.min_confidence = no_good_match, min_confidence


class RetrievalClient:
    """Search one serving alias. ``RetrievalClient("demo")`` uses the configured Milvus and MLflow."""

    def __init__(self, dataset: str, *, alias: str | None = None, uri: str | None = None,
                 settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.dataset = dataset
        self.alias = alias or self.settings.alias(dataset)
        self.index = MilvusIndex(uri or self.settings.milvus_uri, self.settings.milvus_token)
        self._model: tuple[str, RetrievalModel, Centring] | None = None
        self._loaded = ""  # the collection last made ready for search (one load check per alias move, not per query)
        self._params = self.settings.params_for(dataset).index
        self._versions: dict[str, tracking.ModelRef] = {}  # collection -> the registered version that built it
        self._rerankers: dict[str, tuple[Any, Any] | None] = {}  # collection -> (re-ranker, region store) or None
        self._no_rerank: dict[str, str] = {}  # collection -> why it has no usable re-ranker
        self._calibrations: dict[str, Calibration] = {}  # collection -> its score calibration (maybe empty)
        self._keywords: dict[str, bool] = {}  # collection -> whether it has the BM25 keyword field

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> RetrievalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        name = self.index.require_alias(self.alias)
        props = self.index.properties(name)
        self.index.load(name)
        return {"alias": self.alias, "collection": name, "model": props.get("mmr.model_name"),
                "model_version": props.get("mmr.model_version"), "data_version": props.get("mmr.data_version"),
                "dim": self.index.dim(name), "rows": self.index.count(name),
                "published_at": props.get("mmr.published_at"),
                "centred": Centring.from_property(props.get(CENTRE_PROPERTY), f"collection {name}").modalities,
                "rerank": self._rerank_info(name), "calibration": self._calibration_info(name), **self.modes(name)}

    def _calibration_info(self, collection: str) -> dict[str, Any]:
        """Which query -> item modality pairs get a ``confidence`` (and so a ``no_good_match``), fitted on how many
        test queries, and why the others have none (too few queries, none evaluated)."""
        c = self.calibration(collection)
        return {"pairs": {k: {"queries": v.queries, "pairs": v.pairs} for k, v in sorted(c.curves.items())},
                "uncalibrated": dict(sorted(c.uncalibrated.items())),
                "min_confidence": float(self.settings.params_for(self.dataset).calibration.min_confidence)}

    def modes(self, collection: str) -> dict[str, Any]:
        """``search_modes``: the modes ``collection`` can answer (keyword and hybrid only with its BM25 keyword
        field); ``search_mode``: the one a text query without ``mode`` gets (``index.search_mode`` where possible)."""
        keywords = self._has_keywords(collection)
        available = list(hybrid.SEARCH_MODES) if keywords else ["vector"]
        default = self._params.search_mode if self._params.search_mode in available else "vector"
        return {"search_modes": available, "search_mode": default}

    def _rerank_info(self, collection: str) -> dict[str, Any]:
        """Whether text searches of ``collection`` can be re-ranked: the re-ranker's modality and default depth, or
        why not (refused by its gate, none trained, no region store). Reads the re-ranker's saved configuration
        instead of building it, so ``mmr info`` imports no torch."""
        try:
            modality = self._rerank_modality(collection)
            why = self._why_no_reranker(collection) if modality is None else ""
        except MMRError as e:  # the registry or the artifact store is unreachable: say so, info still answers
            return {"available": False, "why": f"unknown: {type(e).__name__}"}
        if modality is None:
            return {"available": False, "why": why}
        return {"available": True, "modality": modality, "depth": self.settings.params_for(self.dataset).rerank.depth}

    def _version(self, collection: str) -> tracking.ModelRef:
        """The registered model version that built ``collection`` (asks the registry once per collection)."""
        if collection not in self._versions:
            name, version = _built_by(self.index.properties(collection), collection)
            self._versions[collection] = tracking.get_version(self.settings, name, version)
        return self._versions[collection]

    def _model_for(self, collection: str) -> tuple[RetrievalModel, Centring]:
        """The model that built ``collection`` and the corpus means its vectors were centred on (cached). A model
        already downloaded loads without asking the registry."""
        if self._model is None or self._model[0] != collection:
            from mmretrieval.models.dual_encoder import pick_device

            props = self.index.properties(collection)
            name, version = _built_by(props, collection)
            model = loading.load_version(self.settings, name, version, pick_device(self.settings.device))
            if model.dim != self.index.dim(collection):
                raise IndexStoreError(f"model {tracking.version_uri(name, version)} makes {model.dim}-d vectors but "
                                      f"{collection!r} holds {self.index.dim(collection)}-d vectors")
            centre = Centring.from_property(props.get(CENTRE_PROPERTY), f"collection {collection!r}")
            self._model = (collection, model, centre)
        return self._model[1], self._model[2]

    def search(self, text: str | None = None, image: Any = None, audio: Any = None, *, k: int = 10,
               modality: str | None = None, filter: str = "", labels: Sequence[str] = (),
               where: Mapping[str, str] | None = None, weights: dict[str, float] | None = None,
               fusion: str = "vector", rerank: int | None = None, min_confidence: float | None = None,
               mode: str | None = None) -> SearchHits:
        """The ``k`` (1..:data:`MAX_K`) nearest items to the query, best first; fewer only when fewer items match.

        ``image`` is a path, raw bytes or a PIL image (decoded by :func:`mmretrieval.media.image.open_image`); ``audio``
        a path or raw bytes. Restrictions combine with ``and`` (see :func:`mmretrieval.serving.filters.build_filter`):
        ``modality``, ``labels`` (any of them), ``where`` (metadata key == value, each) and ``filter`` (a raw
        Milvus expression, kept in parentheses). Several query parts (text, image, audio) are fused by ``fusion``:

        * ``"vector"`` (early fusion): one search with the weighted sum of the parts' unit vectors;
        * ``"late"``: one search per part (``FUSION_DEPTH`` x k candidates each), then each candidate's score is the
          weighted sum of its per-part scores (a part that did not return it contributes its lowest returned score).

        ``rerank`` (text queries over the re-ranker's modality, images or audio): the dual encoder's top
        ``rerank`` hits of that modality are re-scored by the model's cross-attention re-ranker and the top k
        returned, each with ``score`` (the re-ranker's logit) and ``dual_score``. None (default): on, at
        ``rerank.depth`` (at least k), when the serving model has a re-ranker that passed its gate, the collection
        has its region store, and the search is over that modality (``modality`` it, or a collection of only
        it); 0: off. A positive value below k, or one asked of a model or
        query without re-ranking, raises :class:`QueryError`.

        Each hit of a one-part query gets ``confidence``, the probability that it is relevant from the collection's
        score calibration (:mod:`mmretrieval.evaluation.calibration`; from ``dual_score`` when re-ranked), and the
        result's ``no_good_match`` is True when the best confidence is below ``min_confidence`` (0..1; None:
        ``calibration.min_confidence``). Without a calibration, and in keyword and hybrid mode (their scores are not
        the cosines the calibration maps): confidences None, ``no_good_match`` False.

        ``mode`` (:mod:`mmretrieval.serving.hybrid`): ``"vector"`` (the above), ``"keyword"`` (BM25 over the items'
        keyword field; ``score`` is the BM25 score) or ``"hybrid"`` (the vector and keyword lists fused by
        ``index.hybrid``; ``score`` is the fused score; the vector side is the parts' weighted sum); keyword and
        hybrid need a text query and never re-rank. None: ``index.search_mode`` for a text query (vector where the
        collection has no keyword field, or with ``rerank`` > 0), else vector. An explicit keyword or hybrid mode on a
        Milvus without BM25 raises :class:`~mmretrieval.core.errors.SearchModeUnavailable` (a :class:`QueryError`).

        Raises :class:`QueryError` for a bad request (a filter Milvus cannot parse included: no retry),
        :class:`MediaError` for a query file that cannot be used, :class:`IndexStoreError` for Milvus failures.
        """
        query = Query.checked(text, image, audio, k=k, modality=modality, filter=filter, labels=labels, where=where,
                              weights=weights, fusion=fusion, rerank=rerank, mode=mode)
        threshold = self._min_confidence(min_confidence)
        collection = self.index.require_alias(self.alias)
        model, centre = self._model_for(collection)
        parts = self._encode(query, model, centre)
        vector = sum(weight * v for weight, v in parts)
        hits = self._nearest(collection, model, query, parts, vector)
        confidences = self._confidences(collection, query, hits) if self._mode(query, collection) == "vector" \
            else [None] * len(hits)  # keyword and hybrid scores are not the cosines the calibration maps
        found = [Hit(rank=r, id=h["id"], score=round(h["score"], 6), modality=h["modality"], path=h["path"],
                     text=h["text"], label=h["label"], collection=collection, model_version=h["model_version"],
                     data_version=h["data_version"], **_moment(h.get("metadata") or {}, vector),
                     dual_score=round(h["dual_score"], 6) if "dual_score" in h else None,
                     confidence=None if c is None else round(c, 4))
                 for r, (h, c) in enumerate(zip(hits, confidences, strict=True), start=1)]
        return SearchHits(found, decide(confidences, threshold), threshold)

    def _min_confidence(self, value: Any) -> float:
        """The ``no_good_match`` threshold of a search: ``value`` (a number in 0..1) or the dataset's
        ``calibration.min_confidence``; raises :class:`QueryError` naming a bad value."""
        if value is None:
            return float(self.settings.params_for(self.dataset).calibration.min_confidence)
        if not _finite(value) or not 0.0 <= float(value) <= 1.0:
            raise QueryError(f"min_confidence must be a number between 0 and 1, got {value!r}")
        return float(value)

    def calibration(self, collection: str) -> Calibration:
        """The score calibration published with ``collection`` (cached); empty for a collection without one, or with
        one that does not parse (logged: its searches go on, without confidences)."""
        if collection not in self._calibrations:
            raw = self.index.properties(collection).get(CALIBRATION_PROPERTY)
            try:
                self._calibrations[collection] = Calibration.from_json(raw, f"collection {collection!r}")
            except CalibrationError as e:
                log.warning("%s: hits get no confidence and no no_good_match", e)
                self._calibrations[collection] = Calibration()
        return self._calibrations[collection]

    def _confidences(self, collection: str, query: Query, hits: list[dict[str, Any]]) -> list[float | None]:
        """Each hit's probability of relevance (its dual encoder cosine through the collection's calibration of the
        query's modality against the hit's); None for all of a multi-part query's hits."""
        kinds = [m for m, part in (("text", query.text), ("image", query.image), ("audio", query.audio))
                 if part is not None]
        calibration = self.calibration(collection)
        if len(kinds) != 1 or not calibration.curves:
            return [None] * len(hits)
        return [calibration.confidence(kinds[0], h["modality"], h.get("dual_score", h["score"])) for h in hits]

    def query_image_side(self) -> int:
        """The short side (pixels) the serving model resizes a query image to: an image decoded with at least twice
        that (:func:`~mmretrieval.media.image.open_image`'s ``max_side``) gives the same vector up to rounding.
        Loads the model; raises what :meth:`search` raises for a missing alias or model."""
        model, _ = self._model_for(self.index.require_alias(self.alias))
        return query_side(model)

    def _encode(self, query: Query, model: RetrievalModel, centre: Centring) -> list[tuple[float, np.ndarray]]:
        """(weight, (dim,) unit vector, centred like the collection) of each part of ``query``: text, image, audio.
        Raises :class:`QueryError` for a part the serving model has no tower for, :class:`MediaError`."""
        parts: list[tuple[float, np.ndarray]] = []
        w = query.weights
        if query.text is not None:
            parts.append((w.get("text", 1.0), centre.apply(model.encode_texts([query.text])[0], "text")))
        if query.image is not None:
            if "image" not in model.modalities:
                raise QueryError(f"the model behind {self.alias!r} has no image tower; image queries need one")
            vector = model.encode_images([_load_image(query.image, 2 * query_side(model))])[0]
            parts.append((w.get("image", 1.0), centre.apply(vector, "image")))
        if query.audio is not None:
            if "audio" not in model.modalities:
                raise QueryError(f"the model behind {self.alias!r} has no audio tower; audio queries need one")
            wave = _load_wave(model, query.audio)[None]
            parts.append((w.get("audio", 1.0), centre.apply(model.encode_waves(wave)[0], "audio")))
        return parts

    def _nearest(self, collection: str, model: RetrievalModel, query: Query,
                 parts: list[tuple[float, np.ndarray]], vec: np.ndarray) -> list[dict[str, Any]]:
        """The best ``query.k`` rows of ``collection`` (Milvus' dicts, best first): re-ranked, late-fused or one
        search with ``vec``, the parts' weighted vector sum, as :meth:`search` describes."""
        import numpy as np

        expr = query.restriction(query.modality)
        mode = self._mode(query, collection)
        if mode != "vector":
            self._ensure_loaded(collection)
            unit = vec / max(float(np.linalg.norm(vec)), 1e-12)
            return hybrid.search_rows(self.index, collection, self._params, mode, [unit], [str(query.text)],
                                      query.k, expr, consistency=SERVING)[0]
        text_only = len(parts) == 1 and query.text is not None
        depth = self._rerank_depth(query.rerank, query.k, collection, query.modality, text_only=text_only)
        if depth:
            assert query.text is not None
            usable = self._reranker_for(collection)
            assert usable is not None
            candidates = self._search(collection, [parts[0][1]], depth, query.restriction(usable[0].config.modality))
            return self._rerank(collection, model, query.text, candidates[0], query.k)
        if query.fusion == "late" and len(parts) > 1:
            results = self._search(collection, [v for _, v in parts], min(MAX_K, FUSION_DEPTH * query.k), expr)
            return late_fusion([weight for weight, _ in parts], results, query.k)
        return self._search(collection, [vec / max(float(np.linalg.norm(vec)), 1e-12)], query.k, expr)[0]

    def _regions_folder(self, collection: str) -> str:
        """The folder of the region store the embed stage wrote for ``collection``; empty when it has none, and so no
        re-ranking, whatever the registry says (nothing is asked of it)."""
        from mmretrieval.backends.regions import REGIONS

        return str(self.index.properties(collection).get(REGIONS) or "")

    def _reranker_for(self, collection: str) -> tuple[Any, Any] | None:
        """(re-ranker, region store) of the collection's model version, or None when it serves without one (why:
        :meth:`_why_no_reranker`)."""
        if collection not in self._rerankers:
            from mmretrieval.backends.regions import RegionStore
            from mmretrieval.serving.reranking import serving_reranker

            folder = self._regions_folder(collection)
            net = serving_reranker(self.settings, self._version(collection)) if folder else None
            self._rerankers[collection] = (net, RegionStore(Path(folder))) if net is not None else None
        return self._rerankers[collection]

    def _rerank_modality(self, collection: str) -> str | None:
        """What the re-ranker of ``collection`` scores (``"image"`` or ``"audio"``), None when it serves without one;
        from the re-ranker's saved configuration, so without torch."""
        from mmretrieval.backends.regions import RegionStore
        from mmretrieval.serving.reranking import reranker_config

        folder = self._regions_folder(collection)
        config = reranker_config(self.settings, self._version(collection)) if folder else None
        if config is None:
            return None
        RegionStore(Path(folder))  # raises ModelError for a store a search could not read, as a search would
        return str(config.get("modality", "image"))

    def _why_no_reranker(self, collection: str) -> str:
        """Why ``collection`` serves without a re-ranker: refused by its gate, none trained, or no region store."""
        if collection not in self._no_rerank:
            from mmretrieval.serving.reranking import gate_passed, why_unavailable

            ref = self._version(collection)
            self._no_rerank[collection] = (
                f"collection {collection} has no region store for {ref.uri}'s re-ranker: embed and publish again"
                if gate_passed(self.settings, ref) else why_unavailable(self.settings, self.dataset, ref))
        return self._no_rerank[collection]

    def _rerank_depth(self, rerank: int | None, k: int, collection: str, modality: str | None,
                      text_only: bool) -> int:
        """How many dual-encoder candidates to re-rank (0: none), from the ``rerank`` argument of :meth:`search`."""
        if rerank == 0:
            return 0
        if rerank is not None and (not isinstance(rerank, int) or not k <= rerank <= MAX_K):
            raise QueryError(f"rerank must be 0 (off) or between k ({k}) and {MAX_K}, got {rerank!r}")
        usable = self._reranker_for(collection)
        target = usable[0].config.modality if usable is not None else "image"
        if rerank is None:
            if usable is None or not text_only or modality not in (None, target):
                return 0
            if modality is None and len(usable[1]) != self.index.count(collection):
                return 0  # a mixed collection: re-ranking would drop its other modalities, so only on request
            return max(k, self.settings.params_for(self.dataset).rerank.depth)
        if usable is None:
            raise QueryError(f"cannot re-rank: {self._why_no_reranker(collection)}; search without "
                             "re-ranking (rerank=0, mmr search --rerank 0)")
        if not text_only or modality not in (None, target):
            raise QueryError(f"re-ranking scores text queries against {target} items: give only a text query, and "
                             f"modality {target!r} or none (got {modality!r})")
        return rerank

    def _rerank(self, collection: str, model: RetrievalModel, text: str, hits: list[dict[str, Any]], k: int
                ) -> list[dict[str, Any]]:
        """Re-score ``hits`` (the dual encoder's candidates, best first) with the re-ranker; the best k."""
        import numpy as np
        import torch

        from mmretrieval.models.reranker import encode_with_tokens

        usable = self._reranker_for(collection)
        if not hits or usable is None:
            return hits[:k]
        net, store = usable
        regions = torch.from_numpy(store.lookup([h["id"] for h in hits]).astype(np.float32))
        _, tokens, mask = encode_with_tokens(model.text.model, [text])
        with torch.no_grad():
            scores = net.score_candidates(tokens[0], mask[0], regions, torch.tensor([h["score"] for h in hits]))
        order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
        return [{**hits[j], "dual_score": hits[j]["score"], "score": float(scores[j])} for j in order]

    def _mode(self, query: Query, collection: str) -> str:
        """The search mode of ``query``: its own, else ``index.search_mode`` for a text query where the collection
        has a keyword field, else "vector"."""
        if query.mode is not None:
            return query.mode
        if query.text is None or self._params.search_mode == "vector" or query.rerank:
            return "vector"
        if query.image is not None or query.audio is not None:  # text + a file: fused as `fusion` says, by vector
            return "vector"
        return self._params.search_mode if self._has_keywords(collection) else "vector"

    def _has_keywords(self, collection: str) -> bool:
        """Whether ``collection`` has the BM25 keyword field (asked once per collection: a schema never changes)."""
        if collection not in self._keywords:
            self._keywords[collection] = self.index.has_keywords(collection)
        return self._keywords[collection]

    def search_ids(self, mode: str, query_vectors: Sequence[Sequence[float]] | None,
                   query_texts: Sequence[str] | None, k: int, expr: str = "") -> list[list[str]]:
        """Ranked item ids per query of the serving collection in ``mode`` (vector | keyword | hybrid), for
        evaluation: ``query_vectors`` (Q, dim) unit vectors in the collection's space (centred like it),
        ``query_texts`` (Q,) raw texts; see :func:`mmretrieval.serving.hybrid.search_ids` for what each mode needs
        and raises."""
        collection = self.index.require_alias(self.alias)
        self._ensure_loaded(collection)
        return hybrid.search_ids(self.index, collection, self._params, hybrid.check_mode(mode), query_vectors,
                                 query_texts, k, expr, SERVING)

    def _ensure_loaded(self, collection: str) -> None:
        """Load ``collection`` once per alias move."""
        if collection != self._loaded:
            self.index.load(collection)
            self._loaded = collection

    def _search(self, collection: str, vectors: list[Any], k: int, expr: str) -> list[list[dict[str, Any]]]:
        """Search, making sure the collection is loaded once per alias move (and again if someone released it)."""
        self._ensure_loaded(collection)
        try:
            return self.index.search(collection, vectors, k, self._params, expr=expr, consistency=SERVING)
        except QueryError:  # the request is wrong (a filter Milvus cannot parse): nothing to reload or retry
            raise
        except IndexStoreError:
            self.index.load(collection)
            return self.index.search(collection, vectors, k, self._params, expr=expr, consistency=SERVING)


def check_query_mode(mode: Any, text: str | None, rerank: Any) -> None:
    """Raise :class:`QueryError` for a mode that is not one of :data:`~mmretrieval.serving.hybrid.SEARCH_MODES`, a
    keyword or hybrid search without a text query, or one asked to re-rank."""
    hybrid.check_mode(mode)
    if mode != "vector" and text is None:
        raise QueryError(f"search mode {mode!r} matches words: give a text query (or use mode 'vector')")
    if mode != "vector" and rerank:
        raise QueryError(f"search mode {mode!r} does not re-rank: use rerank 0 (off) or mode 'vector'")


def _built_by(props: Mapping[str, str], collection: str) -> tuple[str, str]:
    """(registered model name, version) recorded on a collection by publish; raises :class:`IndexStoreError`."""
    name, version = props.get("mmr.model_name"), props.get("mmr.model_version")
    if not name or not version:
        raise IndexStoreError(f"collection {collection!r} does not record the model that built it")
    return str(name), str(version)


def _moment(metadata: dict[str, Any], query: Any) -> dict[str, Any]:
    """Hit fields from stored metadata: the per-frame vectors of a video are used (``best_time_s``), not returned."""
    from mmretrieval.media.video import FRAMES_KEY, best_time

    packed = metadata.get(FRAMES_KEY)
    if not packed:
        return {"metadata": metadata}
    when = best_time(packed, query)
    return {"metadata": {k: v for k, v in metadata.items() if k != FRAMES_KEY},
            "best_time_s": None if when is None else round(when, 3)}


def late_fusion(weights: list[float], results: list[list[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """Merge per-part result lists: score = sum of weight x score, a missing score counting as that list's lowest."""
    floor = [min((h["score"] for h in hits), default=0.0) for hits in results]
    rows: dict[str, dict[str, Any]] = {}
    scores: dict[str, list[float | None]] = {}
    for part, hits in enumerate(results):
        for h in hits:
            rows.setdefault(h["id"], h)
            scores.setdefault(h["id"], [None] * len(results))[part] = float(h["score"])
    fused = {i: sum(w * (s if s is not None else f) for w, s, f in zip(weights, ss, floor, strict=True))
             for i, ss in scores.items()}
    best = sorted(fused, key=lambda i: (-fused[i], i))[:k]
    return [{**rows[i], "score": fused[i]} for i in best]


def _load_wave(model: RetrievalModel, audio: Any) -> Any:
    """A path or uploaded bytes as the model's fixed-length waveform tensor."""
    if isinstance(audio, (bytes, bytearray)):
        return model.load_wave_bytes(bytes(audio))
    path = Path(audio)
    if not path.is_file():
        raise MediaError(f"query audio {str(path)!r} does not exist")
    return model.load_wave(path)


def query_side(model: RetrievalModel) -> int:
    """The short side (pixels) ``model`` resizes a query image to before its centre crop."""
    return int(model.config.image_size / model.config.image_crop_pct)


def _load_image(image: Any, max_side: int | None = None) -> Image.Image:
    """A query image (path, uploaded bytes or PIL image) via :func:`~mmretrieval.media.image.open_image`, a file or
    bytes decoded no larger than needed (short side at least ``max_side``)."""
    from PIL import Image

    from mmretrieval.media.image import open_image

    if isinstance(image, (Image.Image, bytes, bytearray)):
        return open_image(image, max_side=max_side)
    path = Path(image)
    if not path.is_file():
        raise MediaError(f"query image {str(path)!r} does not exist")
    return open_image(path, max_side=max_side)


def _whole(value: Any) -> bool:
    """An integer (Python or numpy), not a boolean."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    """A finite real number, not a boolean."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
