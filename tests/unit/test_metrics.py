import numpy as np
import pytest

from mmretrieval.evaluation.metrics import both_directions, build_eval_set, retrieval_metrics


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


def _pytrec(sim: np.ndarray, rel: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """The same metrics from trec_eval (pytrec_eval), averaged over the queries that have a relevant item."""
    import pytrec_eval

    qrels = {f"q{q}": {f"d{d}": 1 for d in np.flatnonzero(rel[q])} for q in range(len(rel)) if rel[q].any()}
    run = {q: {f"d{d}": float(sim[int(q[1:]), d]) for d in range(sim.shape[1])} for q in qrels}
    cut = ",".join(map(str, ks))
    measures = {"recip_rank"} | {f"{m}.{cut}" for m in ("success", "recall", "P", "ndcg_cut", "map_cut")}
    scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    mean = {n: float(np.mean([s[n] for s in scores.values()])) for n in next(iter(scores.values()))}
    out = {"mrr": mean["recip_rank"]}
    for k in ks:
        out |= {f"hit_rate@{k}": mean[f"success_{k}"], f"recall@{k}": mean[f"recall_{k}"],
                f"precision@{k}": mean[f"P_{k}"], f"ndcg@{k}": mean[f"ndcg_cut_{k}"],
                f"map_cut@{k}": mean[f"map_cut_{k}"]}
    return out


@pytest.mark.parametrize("seed", range(4))
def test_metrics_agree_with_trec_eval_on_random_rankings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sim = rng.random((30, 25))  # continuous scores: no ties (trec_eval breaks ties by document name)
    rel = rng.random((30, 25)) < (0.05 if seed % 2 else 0.3)
    ks = (1, 3, 10)
    ours, trec = retrieval_metrics(sim, rel, ks), _pytrec(sim, rel, ks)
    for name in ("mrr", *(f"{m}@{k}" for k in ks for m in ("hit_rate", "recall", "precision", "ndcg"))):
        assert ours[name] == pytest.approx(trec[name], abs=1e-4), name
    # map@k divides by min(k, relevant); trec_eval's map_cut_k by all relevant: they agree where relevant <= k
    small = rel.sum(axis=1) <= 3
    assert retrieval_metrics(sim[small], rel[small], (3,))["map@3"] == pytest.approx(
        _pytrec(sim[small], rel[small], (3,))["map_cut@3"], abs=1e-4)


def test_chance_levels_are_the_mean_of_random_rankings() -> None:
    from mmretrieval.evaluation.metrics import chance_levels

    rng = np.random.default_rng(7)
    rel = rng.random((20, 40)) < 0.2
    rel[:, 0] |= ~rel.any(axis=1)
    expected = chance_levels(rel, (1, 5, 10))
    trials = [retrieval_metrics(rng.random(rel.shape), rel, (1, 5, 10)) for _ in range(2000)]
    for name, value in expected.items():
        assert np.mean([t[name] for t in trials]) == pytest.approx(value, abs=0.01), name


def test_a_label_aware_set_has_a_high_hit_rate_by_chance_and_a_low_recall() -> None:
    from mmretrieval.evaluation.metrics import chance_levels

    rel = np.repeat(np.eye(10, dtype=bool), 100, axis=1)  # ten class names, 100 images per class
    chance = chance_levels(rel, (10,))
    assert chance["hit_rate@10"] == pytest.approx(1 - np.prod([(900 - i) / (1000 - i) for i in range(10)]))
    assert chance["recall@10"] == pytest.approx(0.01) and chance["precision@10"] == pytest.approx(0.1)


def test_both_directions_report_each_metric_with_its_chance_level() -> None:
    es = build_eval_set(["a", "b", "c", "d"], [["w"], ["x"], ["y"], ["z"]], [""] * 4)
    m = both_directions(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32), es, ks=(1,))
    assert m["t2i_recall@1"] == 1.0 and m["t2i_recall@1_chance"] == pytest.approx(0.25)
    assert m["i2t_mrr_chance"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
