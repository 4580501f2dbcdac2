"""Late fusion of per-part result lists (pure logic)."""

from mmretrieval.serving.client import late_fusion


def hit(i: str, score: float) -> dict:
    return {"id": i, "score": score, "modality": "image"}


def test_late_fusion_sums_weighted_scores_and_ranks_items_found_by_both_parts_first() -> None:
    text_hits = [hit("a", 0.9), hit("b", 0.8), hit("c", 0.1)]
    image_hits = [hit("b", 0.9), hit("d", 0.85), hit("a", 0.2)]
    fused = late_fusion([1.0, 1.0], [text_hits, image_hits], k=3)
    assert [h["id"] for h in fused] == ["b", "a", "d"]
    assert fused[0]["score"] == 0.8 + 0.9


def test_an_item_missing_from_one_list_counts_that_lists_lowest_score() -> None:
    fused = late_fusion([1.0, 2.0], [[hit("a", 0.5), hit("b", 0.3)], [hit("b", 0.4)]], k=5)
    scores = {h["id"]: round(h["score"], 6) for h in fused}
    assert scores == {"b": round(0.3 + 2 * 0.4, 6), "a": round(0.5 + 2 * 0.4, 6)}


def test_weights_can_make_one_part_dominate() -> None:
    fused = late_fusion([0.0, 1.0], [[hit("a", 1.0), hit("z", 0.0)], [hit("z", 0.9), hit("a", 0.1)]], k=1)
    assert fused[0]["id"] == "z"
