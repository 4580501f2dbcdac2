import numpy as np
import pytest

from mmretrieval.core.errors import TrainingError
from mmretrieval.core.params import GateParams
from mmretrieval.evaluation.gate import decide
from mmretrieval.evaluation.metrics import both_directions, build_eval_set

GATE = GateParams(metric="t2i_recall@10", floor=0.2, tolerance=0.02)


def scored(value: float, chance: float = 0.03, queries: int = 1500) -> dict[str, float]:
    return {"t2i_recall@10": value, "t2i_recall@10_chance": chance, "t2i_queries": queries}


def test_first_model_is_promoted_when_it_reaches_the_floor() -> None:
    assert decide(GATE, scored(0.25), None).promote
    assert not decide(GATE, scored(0.15), None).promote


def test_challenger_within_tolerance_wins_and_a_regression_loses() -> None:
    assert decide(GATE, scored(0.49), scored(0.50)).promote
    d = decide(GATE, scored(0.40), scored(0.50))
    assert not d.promote
    assert any("regression" in r for r in d.reasons)


def test_a_value_above_the_floor_but_within_the_margin_over_chance_is_refused() -> None:
    d = decide(GATE, scored(0.30, chance=0.28), None)  # floor met, but only 0.02 above what chance gives
    assert not d.promote
    assert any("does not beat its chance level 0.2800" in r for r in d.reasons)


def test_with_few_test_queries_the_margin_over_chance_widens_with_its_standard_error() -> None:
    assert decide(GATE, scored(0.30, chance=0.10, queries=1000), None).promote  # 3 SE = 0.028
    d = decide(GATE, scored(0.30, chance=0.10, queries=10), None)  # 3 SE = 0.28: 0.30 < 0.38
    assert not d.promote and any("needs >= 0.3846" in r for r in d.reasons)


def test_metrics_without_their_chance_level_are_refused() -> None:
    with pytest.raises(TrainingError, match="no chance level or query count"):
        decide(GATE, {"t2i_recall@10": 0.9}, None)


def unit_vectors(seed: int, n: int) -> np.ndarray:
    v = np.random.default_rng((seed, n)).normal(size=(n, 32))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["t2i_hit_rate@10", "t2i_recall@10", "t2i_precision@10", "i2t_hit_rate@10"])
def test_a_model_that_ranks_at_random_is_never_promoted(metric: str) -> None:
    """A label-aware test split (10 classes x 30 images, class names as captions), scored from random vectors:
    hit_rate@10 alone is ~0.97 by chance, far above the floor; the margin over chance refuses every seed."""
    labels = [str(c) for c in range(10) for _ in range(30)]
    es = build_eval_set([f"img{j}" for j in range(300)], [[f"class {lab}"] for lab in labels], labels)
    for seed in range(20):
        text, images = (unit_vectors(seed, n) for n in (len(es.captions), 300))
        metrics = both_directions(text, images, es)
        assert not decide(GateParams(metric=metric, floor=0.05), metrics, None).promote, (seed, metrics[metric])


def test_a_gate_no_model_can_pass_on_a_small_test_split_says_so_and_names_a_metric_that_can() -> None:
    d = decide(GATE, scored(1.0, chance=0.9091, queries=55), None)  # 11 test photos: chance R@10 = 10/11
    assert not d.promote
    assert any("no model can pass" in r and "t2i_recall@1" in r for r in d.reasons)
    assert not any("no model can pass" in r for r in decide(GATE, scored(0.30), None).reasons)
