"""The cross-attention re-ranker: shapes, masking, saving; hard-negative mining; listwise and distillation losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmretrieval.errors import ModelError, TrainingError
from mmretrieval.models.reranker import CrossReranker, RerankerConfig, load, save
from mmretrieval.training.rerank import (
    RerankData,
    RerankSchedule,
    candidate_lists,
    distill_kl,
    listwise_loss,
    mine_hard_negatives,
    rerank_matrix,
    train_reranker,
)

SMALL = RerankerConfig(text_dim=12, backbone_dim=20, regions=4, region_dim=8, layers=2, heads=2, dropout=0.0)


def small_net(config: RerankerConfig = SMALL) -> CrossReranker:
    torch.manual_seed(0)
    return CrossReranker(config).eval()


def test_reranker_scores_one_logit_per_pair_and_stores_regions_per_cell() -> None:
    net = small_net()
    regions = net.project_regions(torch.randn(5, 20, 2, 2))
    assert regions.shape == (5, 4, 8)  # (items, H * W cells, region_dim)
    tokens, mask = torch.randn(5, 7, 12), torch.ones(5, 7, dtype=torch.bool)
    assert net(tokens, mask, regions, torch.rand(5)).shape == (5,)
    assert net.score_candidates(tokens[0], mask[0], regions, torch.rand(5)).shape == (5,)


def test_padding_tokens_and_padded_regions_do_not_change_the_score() -> None:
    net = small_net()
    tokens, regions, dual = torch.randn(3, 5, 12), torch.randn(3, 4, 8), torch.rand(3)
    mask = torch.tensor([[True] * 3 + [False] * 2] * 3)
    base = net(tokens, mask, regions, dual)
    garbage = tokens.clone()
    garbage[:, 3:] = 1e3  # whatever sits in padded token positions is ignored
    assert torch.allclose(net(garbage, mask, regions, dual), base, atol=1e-5)
    # a fifth, masked-out region changes nothing either
    padded = torch.cat([regions, torch.full((3, 1, 8), 50.0)], dim=1)
    net5 = CrossReranker(RerankerConfig(**{**SMALL.__dict__, "regions": 5})).eval()
    net5.load_state_dict({**net.state_dict(), "region_pos": torch.cat([net.region_pos.detach(), torch.zeros(1, 8)])})
    region_mask = torch.tensor([[True] * 4 + [False]] * 3)
    assert torch.allclose(net5(tokens, mask, padded, dual, region_mask), base, atol=1e-5)
    # while a real token does change it
    changed = tokens.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(net(changed, mask, regions, dual), base)


def test_reranker_rejects_a_feature_map_of_another_grid_or_width() -> None:
    net = small_net()
    with pytest.raises(ModelError, match="9 cells"):
        net.project_regions(torch.randn(1, 20, 3, 3))
    with pytest.raises(ModelError, match=r"\(1, 30, 2, 2\)"):
        net.project_regions(torch.randn(1, 30, 2, 2))


def test_saved_reranker_loads_identical_with_its_meta(tmp_path: Path) -> None:
    net = small_net()
    save(net, tmp_path / "rr", {"dual_encoder_version": "3"})
    loaded, meta = load(tmp_path / "rr")
    x = (torch.randn(2, 3, 12), torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 4, 8), torch.rand(2))
    assert torch.equal(loaded(*x), net(*x))
    assert meta == {"dual_encoder_version": "3"}
    (tmp_path / "rr" / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="weights.safetensors"):
        load(tmp_path / "rr")


def test_hard_negatives_are_the_top_ranked_wrong_items() -> None:
    sim = np.array([[0.9, 0.8, 0.1, 0.5, 0.7],
                    [0.2, 0.3, 0.9, 0.1, 0.0]])
    rel = np.array([[True, False, False, False, False],
                    [False, False, True, True, False]])
    neg = mine_hard_negatives(sim, rel, 2)
    assert neg.tolist() == [[1, 4], [1, 0]]  # relevant items (even a high-scored one) are never negatives
    lists = candidate_lists(rel, neg, np.random.default_rng(0))
    assert lists[0].tolist() == [0, 1, 4] and lists[1, 0] in (2, 3)
    with pytest.raises(TrainingError, match="only 3 non-relevant"):
        mine_hard_negatives(sim, rel, 4)


def test_listwise_loss_prefers_the_relevant_item_first() -> None:
    good, bad = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    assert listwise_loss(good) < listwise_loss(bad)


def test_distillation_pulls_the_student_to_the_teachers_known_ranking() -> None:
    """The teacher ranks candidate 2 > 0 > 1; a student trained on the KL term alone learns that order."""
    teacher = torch.tensor([[1.0, -2.0, 3.0]])
    assert distill_kl(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([student], lr=1.0)
    before = distill_kl(student, teacher).item()
    for _ in range(200):
        opt.zero_grad()
        distill_kl(student, teacher, temperature=2.0).backward()
        opt.step()
    assert distill_kl(student, teacher).item() < before / 100
    assert student.detach().argsort(descending=True).tolist() == [[2, 0, 1]]
    # a shift of all scores changes nothing: it is the ranking (distribution), not the raw scores, that is distilled
    assert distill_kl(teacher + 5.0, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_training_on_a_learnable_toy_task_lifts_the_relevant_items_over_hard_negatives() -> None:
    """Each query token matches its item's single bright region; the dual scores are uninformative noise."""
    g = torch.Generator().manual_seed(0)
    n, width = 12, 20
    codes = torch.randn(n, width, generator=g)
    maps = torch.randn(n, width, 2, 2, generator=g) * 0.1
    maps[:, :, 0, 0] += codes  # the item's code sits in one cell
    tokens = torch.cat([codes[:, :12].unsqueeze(1), torch.zeros(n, 1, 12)], dim=1)  # (n, 2, 12), 2nd is padding
    mask = torch.tensor([[True, False]] * n)
    rel = np.eye(n, dtype=bool)
    dual = np.random.default_rng(0).random((n, n)).astype(np.float32)
    net = CrossReranker(SMALL)
    data = RerankData(tokens, mask, maps.unsqueeze(0), rel, dual)
    losses = train_reranker(net, data, RerankSchedule(epochs=60, negatives=5, batch_size=6, lr=3e-3))
    assert losses[-1] < losses[0] / 2
    with torch.no_grad():
        scores = rerank_matrix(net, tokens, mask, net.project_regions(maps), dual, depth=n)
    assert (scores.argmax(axis=1) == np.arange(n)).mean() > (dual.argmax(axis=1) == np.arange(n)).mean()


def test_rerank_matrix_only_reorders_the_top_depth() -> None:
    net = small_net()
    sim = np.array([[0.9, 0.1, 0.5, 0.7]], dtype=np.float32)
    tokens, mask = torch.randn(1, 3, 12), torch.ones(1, 3, dtype=torch.bool)
    regions = torch.randn(4, 4, 8)
    out = rerank_matrix(net, tokens, mask, regions, sim, depth=2)
    assert set(np.argsort(-out[0])[:2]) == {0, 3}  # the dual top 2, in the re-ranker's order
    assert np.argsort(-out[0])[2:].tolist() == [2, 1]  # the rest keep the dual order below


def test_out_of_fold_scores_only_compare_captions_with_unseen_images_of_their_fold() -> None:
    from mmretrieval.training.rerank import out_of_fold_scores

    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(1, 8, 6, generator=g)
    owner = torch.arange(8).repeat_interleave(2)  # two captions per image
    sentences = torch.randn(16, 4, generator=g)
    scores = out_of_fold_scores(pooled, sentences, owner, folds=2, epochs=2, batch_size=4)
    assert scores.shape == (16, 8)
    inside = scores > -2
    assert (inside.sum(axis=1) == 4).all()  # each caption meets the 4 images of its own fold...
    assert inside[np.arange(16), owner.numpy()].all()  # ...its own image among them
    assert (np.abs(scores[inside]) <= 1 + 1e-5).all()
    with pytest.raises(TrainingError, match="3 folds over 4"):
        out_of_fold_scores(pooled[:, :4], sentences, owner, folds=3)


CONCEPTS = RerankerConfig(text_dim=4, backbone_dim=3, regions=4, layers=0, concepts=2, concept_grid=2)


def concept_net(config: RerankerConfig = CONCEPTS) -> CrossReranker:
    """Two classes: channel 0 of a cell votes "dog", channel 1 "beach"; their names embed as axes 0 and 1."""
    net = CrossReranker(config).eval()
    weight = torch.tensor([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    names = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    net.set_concepts(weight, torch.zeros(2), names)
    return net


def picture(cells: list[int]) -> torch.Tensor:
    """(1, 3, 2, 2) feature map whose four cells show class ``cells[i]`` (0 dog, 1 beach)."""
    fm = torch.zeros(1, 3, 4)
    for i, c in enumerate(cells):
        fm[0, c, i] = 1.0
    return fm.view(1, 3, 2, 2)


def test_concept_regions_live_in_the_text_space_and_words_find_their_region() -> None:
    net = concept_net()
    dog, beach, dog_on_beach = (net.project_regions(picture(c)) for c in ([0] * 4, [1] * 4, [0, 0, 1, 1]))
    assert dog.shape == (1, 4, 4) and torch.allclose(dog.norm(dim=-1), torch.ones(1, 4))
    assert dog[0, 0, 0] > 0.99 and beach[0, 0, 1] > 0.99  # a dog cell is the word "dog", a beach cell "beach"
    words = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]])  # the query "dog beach" as two token states
    mask = torch.ones(1, 2, dtype=torch.bool)
    whole, per_word = zip(*(net.concept_scores(words, mask, r) for r in (dog, beach, dog_on_beach)), strict=True)
    assert per_word[2] > 0.99 > per_word[0] and per_word[2] > per_word[1]  # each word has its region only there
    assert abs(float(whole[0] - whole[1])) < 1e-6  # the whole picture is half right either way
    scores = net.score_candidates(words[0], mask[0], torch.cat([dog, beach, dog_on_beach]), torch.zeros(3))
    assert int(scores.argmax()) == 2


def test_concept_reranker_has_only_mixing_weights_and_survives_saving(tmp_path: Path) -> None:
    net = concept_net()
    assert sorted(n for n, _ in net.named_parameters()) == ["concept_mix", "dual_weight"]
    save(net, tmp_path / "r")
    again, _ = load(tmp_path / "r")
    fm = picture([0, 1, 0, 1])
    assert torch.equal(again.project_regions(fm), net.project_regions(fm))
    with pytest.raises(ModelError, match="nothing to score"):
        CrossReranker(RerankerConfig(layers=0, concepts=0))
    with pytest.raises(ModelError, match="does not fit"):
        net.set_concepts(torch.zeros(3, 3), torch.zeros(3), torch.zeros(3, 4))


def test_concept_reranker_learns_its_mixing_weights_from_lists() -> None:
    """Relevant items are the ones whose concepts match the caption; the dual cosine is noise: training must
    raise the concept weights relative to the dual weight."""
    net = concept_net(RerankerConfig(text_dim=4, backbone_dim=3, regions=4, layers=0, concepts=2, concept_grid=2))
    maps = torch.cat([picture([0] * 4), picture([1] * 4)] * 10)  # items 2k: dog, 2k+1: beach
    rng = np.random.default_rng(0)
    relevant = np.zeros((40, 20), dtype=bool)
    tokens = torch.zeros(40, 1, 4)
    for q in range(40):
        item = int(rng.integers(0, 20))
        relevant[q, item] = True
        tokens[q, 0, item % 2] = 1.0  # the caption names the item's class
    dual = rng.random((40, 20)).astype(np.float32)
    before = (net.dual_weight.item(), net.concept_mix.detach().clone())
    train_reranker(net, RerankData(tokens, torch.ones(40, 1, dtype=torch.bool), maps[None], relevant, dual),
                   RerankSchedule(epochs=5, negatives=4, batch_size=8, seed=0))
    assert net.concept_mix.sum().item() / net.dual_weight.item() > before[1].sum().item() / before[0]
