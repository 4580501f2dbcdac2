"""Score calibration: monotone by construction, refused on too few queries, stored and read back, and the
no_good_match decision it drives (issue 27)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmretrieval.core.errors import CalibrationError
from mmretrieval.core.params import CalibrationParams
from mmretrieval.evaluation.calibration import Calibration, Curve, decide, fit, fit_curve, knots_of, top_hits


def answerable(queries: int, seed: int = 0, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(queries, k) descending scores where the relevant hit (at most one a query) tends to score high."""
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.normal(0.25, 0.05, size=(queries, k)), axis=1)[:, ::-1]
    relevant = np.zeros((queries, k), dtype=bool)
    good = rng.random(queries) < 0.6
    rank = np.minimum(rng.geometric(0.4, size=queries) - 1, k - 1)
    relevant[np.flatnonzero(good), rank[good]] = True
    scores[relevant] += 0.15  # relevant hits score higher
    return scores, relevant


def test_a_fitted_curve_is_monotone_between_and_beyond_its_knots() -> None:
    curve = fit_curve(*answerable(400), min_queries=50)
    grid = np.linspace(-1.0, 1.0, 2001)
    p = curve(grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    assert curve(0.6) > curve(0.2)  # it separates: high scores are likelier to be relevant
    assert np.all(np.diff(curve.x) > 0) and len(curve.x) <= 32 and curve.queries == 400 and curve.pairs == 4000


@pytest.mark.parametrize("seed", range(5))
def test_monotone_even_where_the_data_is_not(seed: int) -> None:
    rng = np.random.default_rng(seed)  # relevance unrelated to (or against) the score: still never decreasing
    scores = rng.random((60, 10))
    relevant = rng.random((60, 10)) < (1 - scores) * 0.3
    curve = fit_curve(scores, relevant, min_queries=50, knots=7)
    assert np.all(np.diff(curve(np.linspace(0, 1, 500))) >= 0) and len(curve.x) <= 7


def test_knots_sit_in_the_middle_of_steps_so_interpolation_rises_between_them() -> None:
    x, p = knots_of(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), np.array([0.0, 0.0, 0.5, 0.5, 1.0, 1.0]), 32)
    assert list(x) == [0.1, 0.15, 0.35, 0.55, 0.6] and list(p) == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_a_fit_on_too_few_queries_is_refused_naming_the_count_and_the_key() -> None:
    scores, relevant = answerable(49)
    with pytest.raises(CalibrationError, match=r"only 49 test queries.*at least 50.*calibration.min_queries"):
        fit_curve(scores, relevant, min_queries=50)
    calibration = fit({"image": (scores, relevant)}, top_k=10, min_queries=50)
    assert calibration.curves == {} and "only 49 test queries" in calibration.uncalibrated["text->image"]
    assert calibration.confidence("text", "image", 0.9) is None  # uncalibrated: no confidence


def test_labels_all_alike_and_bad_shapes_are_refused() -> None:
    scores, _ = answerable(60)
    with pytest.raises(CalibrationError, match="all 600 calibration hits are irrelevant"):
        fit_curve(scores, np.zeros_like(scores, dtype=bool), min_queries=50)
    with pytest.raises(CalibrationError, match=r"\(60, 10\) and relevant \(60, 9\)"):
        fit_curve(scores, np.zeros((60, 9), dtype=bool), min_queries=50)


def test_a_curve_that_is_not_monotone_cannot_be_built_or_read() -> None:
    with pytest.raises(CalibrationError, match="non-decreasing"):
        Curve((0.1, 0.2), (0.5, 0.4), 50, 500)
    raw = json.dumps({"curves": {"text->image": {"x": [0.1, 0.2], "p": [0.9, 0.1], "queries": 50, "pairs": 500}}})
    with pytest.raises(CalibrationError, match="collection mmr_x__m1"):
        Calibration.from_json(raw, "collection mmr_x__m1")
    with pytest.raises(CalibrationError, match="collection mmr_x__m1"):
        Calibration.from_json("{not json", "collection mmr_x__m1")


def test_fit_uses_each_querys_top_k_of_the_full_similarity_matrix() -> None:
    rng = np.random.default_rng(3)
    sim = rng.random((80, 40))
    relevant = np.zeros((80, 40), dtype=bool)
    relevant[np.arange(80), rng.integers(0, 40, size=80)] = True
    top, rel = top_hits(sim, relevant, 5)
    assert top.shape == (80, 5) and np.all(np.diff(top, axis=1) <= 0)
    assert np.array_equal(top[:, 0], sim.max(axis=1)) and rel.sum() == sum(
        relevant[q, np.argsort(-sim[q])[:5]].sum() for q in range(80))
    calibration = fit({"image": (sim, relevant), "audio": (sim[:10], relevant[:10])}, top_k=5, min_queries=50)
    assert sorted(calibration.curves) == ["text->image"] and list(calibration.uncalibrated) == ["text->audio"]
    assert calibration.curves["text->image"].pairs == 400


def test_the_calibration_survives_the_json_round_trip_and_stays_small() -> None:
    calibration = fit({"image": answerable(300), "video": answerable(120, seed=1)}, top_k=10, min_queries=100)
    raw = calibration.to_json()
    back = Calibration.from_json(raw)
    assert back == calibration and len(raw) < 2500  # fits a registry tag and a collection property
    assert back.confidence("text", "video", 0.5) == calibration.curves["text->video"](0.5)
    assert back.confidence("image", "video", 0.5) is None  # no curve for image queries
    assert Calibration.from_json("") == Calibration() == Calibration.from_json(None)


def test_no_good_match_is_the_best_confidence_below_the_threshold() -> None:
    assert decide([0.02, 0.04], 0.05) is True
    assert decide([None, 0.02, 0.04], 0.05) is False  # an unjudged hit (no curve for its pair) may be the good one
    assert decide([0.02, 0.04, None], 0.05) is False
    assert decide([0.02, 0.06], 0.05) is False  # any hit at or above it: a good match
    assert decide([0.05], 0.05) is False
    assert decide([None, None], 0.05) is False  # uncalibrated: never flagged
    assert decide([], 0.05) is False


def test_params_bound_the_threshold_and_the_minimum() -> None:
    from pydantic import ValidationError

    assert CalibrationParams().min_queries >= 1
    with pytest.raises(ValidationError):
        CalibrationParams(min_confidence=1.5)
    with pytest.raises(ValidationError):
        CalibrationParams(min_queries=0)


def test_serving_reads_an_unreadable_calibration_as_none_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from mmretrieval.evaluation.calibration import PROPERTY
    from mmretrieval.serving.client import RetrievalClient

    client = RetrievalClient.__new__(RetrievalClient)  # only what calibration() reads: the collection's properties
    client._calibrations = {}
    client.index = SimpleNamespace(properties=lambda name: {PROPERTY: "{not json"})
    assert client.calibration("mmr_x__m1") == Calibration()  # searches go on, without confidences
    assert "collection 'mmr_x__m1' has an unreadable mmr.calibration" in caplog.text
