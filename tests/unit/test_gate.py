from mmretrieval.config import GateParams
from mmretrieval.promote import decide

GATE = GateParams(metric="t2i_recall@10", floor=0.2, tolerance=0.02)


def test_first_model_is_promoted_when_it_reaches_the_floor() -> None:
    assert decide(GATE, {"t2i_recall@10": 0.25}, None).promote
    assert not decide(GATE, {"t2i_recall@10": 0.15}, None).promote


def test_challenger_within_tolerance_wins_and_a_regression_loses() -> None:
    assert decide(GATE, {"t2i_recall@10": 0.49}, {"t2i_recall@10": 0.50}).promote
    d = decide(GATE, {"t2i_recall@10": 0.40}, {"t2i_recall@10": 0.50})
    assert not d.promote
    assert any("regression" in r for r in d.reasons)
