"""Score calibration: the probability that a hit is relevant, from its score, and "no good match".

A search always returns k hits, even for a query the collection has no answer to (a tax form against a photo
collection); their cosines look like any other query's to a reader. A calibration fitted when a model is evaluated
turns a hit's score into the probability that it is relevant, so serving can say ``no_good_match`` when even the best
hit is unlikely to be (docs/serving.md#no-good-match).

The fit: for every test query (a caption) of each media modality, the top ``top_k`` hits of the exact search the
evaluator ran (the scores serving would give: centred where ``index.centre`` says), labelled relevant or not, then an
isotonic regression of relevance on score (monotone non-decreasing), kept as at most :data:`KNOTS` (score,
probability) knots, the middles of its steps, and interpolated linearly between them (constant beyond the ends):
monotone by construction. A query modality pair with fewer than ``min_queries`` queries is left uncalibrated, with
the reason recorded.

The calibration travels with the model version (the registry tag :data:`TAG`) and is copied onto the collection at
publish (the property :data:`PROPERTY`), so serving uses exactly the calibration of the model that built the
collection; a collection without one (models evaluated before calibration existed) gives ``confidence`` None and never
flags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmretrieval.core.errors import CalibrationError

PROPERTY = "mmr.calibration"  # collection property: Calibration.to_json()
TAG = "calibration"  # the registered model version's tag: the same JSON
KNOTS = 32  # (score, probability) points kept per curve (JSON of a few hundred characters)
FEATURE = "cosine"  # what a curve maps: the dual encoder's cosine of a hit (``dual_score`` when re-ranked)


def pair(query_modality: str, item_modality: str) -> str:
    """The key of a query modality pair, e.g. ``text->image``."""
    return f"{query_modality}->{item_modality}"


@dataclass(frozen=True)
class Curve:
    """A monotone map from score to probability of relevance: knots ``x`` (strictly increasing scores) and ``p``
    (non-decreasing probabilities in [0, 1]), linear in between, constant beyond the ends."""

    x: tuple[float, ...]
    p: tuple[float, ...]
    queries: int  # test queries it was fitted on
    pairs: int  # (score, relevant) pairs: queries x top_k

    def __post_init__(self) -> None:
        x, p = np.asarray(self.x, dtype=float), np.asarray(self.p, dtype=float)
        if len(x) < 1 or len(x) != len(p) or not np.all(np.isfinite(x)) or not np.all(np.isfinite(p)):
            raise CalibrationError(f"a calibration curve needs as many finite scores as probabilities, got "
                                   f"{len(x)} and {len(p)}")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(p) < 0) or p.min() < 0 or p.max() > 1:
            raise CalibrationError("a calibration curve needs increasing scores and non-decreasing probabilities "
                                   f"in [0, 1], got x={list(self.x)[:5]}…, p={list(self.p)[:5]}…")

    def __call__(self, scores: Any) -> np.ndarray:
        """Probabilities of relevance (same shape as ``scores``, float64)."""
        return np.interp(np.asarray(scores, dtype=float), self.x, self.p)


@dataclass(frozen=True)
class Calibration:
    """Curves per query modality pair (:func:`pair`), and why the other pairs of the evaluation have none."""

    curves: dict[str, Curve] = field(default_factory=dict)
    uncalibrated: dict[str, str] = field(default_factory=dict)  # pair -> reason
    top_k: int = 10
    feature: str = FEATURE

    def confidence(self, query_modality: str, item_modality: str, score: float | None) -> float | None:
        """The probability that a hit of ``item_modality`` with ``score`` is relevant to a ``query_modality``
        query; None when that pair has no curve or there is no score."""
        curve = self.curves.get(pair(query_modality, item_modality))
        if curve is None or score is None:
            return None
        return float(curve(score))

    def to_json(self) -> str:
        return json.dumps({"feature": self.feature, "top_k": self.top_k, "uncalibrated": self.uncalibrated,
                           "curves": {k: {"x": list(c.x), "p": list(c.p), "queries": c.queries, "pairs": c.pairs}
                                      for k, c in sorted(self.curves.items())}}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None, where: str = "collection") -> Calibration:
        """Parse :meth:`to_json`'s text (empty or missing: no curves). Raises :class:`CalibrationError` naming
        ``where`` for text that does not parse or curves that are not monotone."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            curves = {str(k): Curve(tuple(map(float, c["x"])), tuple(map(float, c["p"])), int(c["queries"]),
                                    int(c["pairs"])) for k, c in data.get("curves", {}).items()}
            return cls(curves, {str(k): str(v) for k, v in data.get("uncalibrated", {}).items()},
                       int(data.get("top_k", 10)), str(data.get("feature", FEATURE)))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CalibrationError(f"{where} has an unreadable {PROPERTY} calibration: {e}") from e


def fit_curve(scores: np.ndarray, relevant: np.ndarray, *, min_queries: int, knots: int = KNOTS) -> Curve:
    """A :class:`Curve` from (queries, k) ``scores`` of each query's top k hits and their (queries, k) boolean
    ``relevant`` labels (isotonic regression of relevance on score, kept as :func:`knots_of` says).

    Raises :class:`CalibrationError` for fewer than ``min_queries`` queries (a curve from a handful of queries says
    more about them than about the model), mismatched shapes, non-finite scores, or labels all alike (nothing to
    separate)."""
    from sklearn.isotonic import IsotonicRegression

    scores, relevant = np.asarray(scores, dtype=float), np.asarray(relevant, dtype=bool)
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise CalibrationError(f"scores {scores.shape} and relevant {relevant.shape} must both be (queries, k)")
    if scores.shape[0] < max(1, min_queries):
        raise CalibrationError(f"only {scores.shape[0]} test queries to calibrate on; need at least {min_queries} "
                               "(calibration.min_queries)")
    if not np.all(np.isfinite(scores)):
        raise CalibrationError("scores to calibrate on must be finite")
    x, y = scores.ravel(), relevant.ravel().astype(float)
    if y.min() == y.max():
        raise CalibrationError(f"all {len(y)} calibration hits are {'relevant' if y[0] else 'irrelevant'}: "
                               "nothing to calibrate")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, y)
    grid, p = knots_of(iso.X_thresholds_, iso.y_thresholds_, knots)
    return Curve(tuple(float(v) for v in grid), tuple(float(v) for v in p), int(scores.shape[0]), int(x.size))


def knots_of(xs: np.ndarray, ys: np.ndarray, knots: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``knots`` (score, probability) points of an isotonic step function given by its thresholds ``xs``
    (non-decreasing) and values ``ys`` (non-decreasing): the middle of each step, plus both ends, so that linear
    interpolation rises between steps instead of jumping; rounded to 4 decimals, then made strictly increasing in
    score and non-decreasing in probability (monotone by construction)."""
    steps = np.flatnonzero(np.r_[True, np.diff(ys) > 0, True])  # the first threshold of each step, and the end
    mids = [(xs[a] + xs[b - 1]) / 2 for a, b in zip(steps[:-1], steps[1:], strict=True)]
    x = np.r_[xs[0], mids, xs[-1]]
    p = np.r_[ys[0], ys[steps[:-1]], ys[-1]]
    if len(x) > knots:  # keep both ends and evenly spaced steps between
        keep = np.unique(np.round(np.linspace(0, len(x) - 1, max(2, knots))).astype(int))
        x, p = x[keep], p[keep]
    x, first = np.unique(np.round(x, 4), return_index=True)
    p = np.maximum.accumulate(np.clip(np.round(p[first], 4), 0.0, 1.0))
    return x, p


def top_hits(sim: np.ndarray, relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (queries, k) best scores of each row of ``sim`` (queries, items), best first, and whether each of those
    items is relevant (``relevant``: the same shape as ``sim``)."""
    k = min(k, sim.shape[1])
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, axis=1), np.take_along_axis(relevant, order, axis=1)


def fit(scored: Mapping[str, tuple[np.ndarray, np.ndarray]], *, top_k: int, min_queries: int) -> Calibration:
    """A calibration of text queries against each media modality of ``scored`` (modality -> ((queries, items)
    similarities as serving scores them, (queries, items) boolean relevance)); a modality whose fit is refused
    (:func:`fit_curve`) is recorded in ``uncalibrated`` with the reason."""
    curves, refused = {}, {}
    for modality, (sim, relevant) in sorted(scored.items()):
        key = pair("text", modality)
        try:
            curves[key] = fit_curve(*top_hits(np.asarray(sim), np.asarray(relevant, dtype=bool), top_k),
                                    min_queries=min_queries)
        except CalibrationError as e:
            refused[key] = str(e)
    return Calibration(curves, refused, top_k)


def decide(confidences: list[float | None], min_confidence: float) -> bool:
    """``no_good_match``: True when every hit has a confidence and the best one is below ``min_confidence``; False
    when any hit has none (an uncalibrated collection, or a hit of a query modality pair without a curve, which
    may be the good one: never judged on the others alone) or there are no hits."""
    if not confidences or any(c is None for c in confidences):
        return False
    return max(c for c in confidences if c is not None) < min_confidence


def from_evaluation(per_modality: Mapping[str, Any], *, top_k: int, min_queries: int) -> Calibration:
    """:func:`fit` on what the evaluator scored (modality -> :class:`~mmretrieval.evaluation.evaluator.Scored`:
    its ``sim`` are the (captions, items) cosines as serving scores them, centred where ``index.centre`` says)."""
    return fit({m: (s.sim, s.eval_set.relevant) for m, s in per_modality.items()}, top_k=top_k,
               min_queries=min_queries)


def summary(calibration: Calibration) -> dict[str, Any]:
    """What the evaluate report records: each curve's queries and its probability at a few scores, and the
    reasons of the pairs left uncalibrated."""
    return {"feature": calibration.feature, "top_k": calibration.top_k, "uncalibrated": calibration.uncalibrated,
            "curves": {k: {"queries": c.queries, "pairs": c.pairs, "x": list(c.x), "p": list(c.p)}
                       for k, c in sorted(calibration.curves.items())}}
