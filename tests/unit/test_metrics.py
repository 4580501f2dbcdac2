import numpy as np
import pytest

from mmretrieval.metrics import both_directions, build_eval_set, retrieval_metrics


def test_perfect_ranking_scores_one_everywhere() -> None:
    sim = np.eye(4)
    m = retrieval_metrics(sim, np.eye(4, dtype=bool), ks=(1, 5))
    assert m["recall@1"] == 1.0 and m["map@1"] == 1.0 and m["median_rank"] == 1.0
    assert m["precision@5"] == pytest.approx(1 / 5)  # one relevant item, five slots


def test_known_ranks_give_known_metrics() -> None:
    # query 0: relevant item ranked 2nd; query 1: relevant ranked 1st; query 2: relevant ranked 3rd
    sim = np.array([[0.9, 0.8, 0.1], [0.1, 0.9, 0.2], [0.9, 0.8, 0.7]])
    rel = np.array([[False, True, False], [False, True, False], [False, False, True]])
    m = retrieval_metrics(sim, rel, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["median_rank"] == 2.0
    assert m["map@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_multi_caption_items_merge_identical_captions_and_use_labels() -> None:
    es = build_eval_set(["a", "b", "c"], [["a dog", "A dog"], ["a cat"], ["a kitten"]], ["", "cat", "cat"])
    assert es.captions == ["a dog", "a cat", "a kitten"]
    assert es.relevant.tolist() == [[True, False, False], [False, True, True], [False, True, True]]


def test_both_directions_are_reported_from_unit_vectors() -> None:
    es = build_eval_set(["a", "b"], [["x"], ["y"]], ["", ""])
    v = np.eye(2, dtype=np.float32)
    m = both_directions(v, v, es, ks=(1,))
    assert m["t2i_recall@1"] == 1.0 and m["i2t_recall@1"] == 1.0


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        retrieval_metrics(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))
