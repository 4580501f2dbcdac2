"""The cross-attention re-ranker: shapes, masking, saving; hard-negative mining; listwise and distillation losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmretrieval.core.errors import ModelError, TrainingError
from mmretrieval.models.reranker import CrossReranker, RerankerConfig, load, save
from mmretrieval.training.rerank import (
    RerankData,
    RerankSchedule,
    candidate_lists,
    distill_kl,
    listwise_loss,
    mine_hard_negatives,
    pair_lists,
    rerank_matrix,
    train_item_student,
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


@pytest.mark.integration  # trains a model until it has learned the task
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


@pytest.mark.integration  # trains a model until it has learned the task
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


@pytest.mark.integration  # trains a model until it has learned the task
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


@pytest.mark.integration  # trains a model until it has learned the task
def test_concept_mix_is_fitted_to_a_teacher_that_ranks_by_concepts() -> None:
    """The student's dual vectors are noise; the teacher ranks by the items' concepts: the fitted mix must grow
    and make the student rank each list's relevant item first more often."""
    from mmretrieval.training.rerank import train_concept_mix

    class Student(torch.nn.Module):  # the three members train_concept_mix uses (a DualEncoder has them)
        def __init__(self) -> None:
            super().__init__()
            self.concept_mix = torch.nn.Parameter(torch.tensor(0.0))
            self.logit_scale = torch.nn.Parameter(torch.tensor(3.0))

        def concepts(self, features: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(features, dim=-1)

    g = torch.Generator().manual_seed(0)
    items, queries = 30, 60
    pooled = torch.randn(items, 8, generator=g)  # the concept of item i is its own direction
    vectors = torch.nn.functional.normalize(torch.randn(items, 8, generator=g), dim=-1)  # uninformative
    owner = torch.randint(0, items, (queries,), generator=g)
    sentences = pooled[owner] + 0.1 * torch.randn(queries, 8, generator=g)
    negatives = torch.stack([torch.tensor([j for j in torch.randperm(items, generator=g).tolist() if j != o][:5])
                             for o in owner.tolist()])
    lists = torch.cat([owner[:, None], negatives], dim=1)
    teacher = 20 * torch.einsum("qd,qcd->qc", torch.nn.functional.normalize(sentences, dim=-1),
                                torch.nn.functional.normalize(pooled[lists], dim=-1))
    student = Student()

    def first_right() -> float:
        with torch.no_grad():
            v = torch.nn.functional.normalize(vectors[lists] + student.concept_mix * student.concepts(pooled)[lists],
                                              dim=-1)
            return float((torch.einsum("qd,qcd->qc", sentences, v).argmax(1) == 0).float().mean())

    before = first_right()
    losses = train_concept_mix(student, vectors, pooled, sentences, lists, teacher, steps=100)
    assert student.concept_mix.item() > 1.0 and losses[-1] < losses[0]
    assert first_right() > before + 0.3


def label_relevance(labels: list[int], captions: int) -> np.ndarray:
    """(captions, items) relevance where caption c describes every item of label c (spoken digits' case)."""
    return np.array([[lab == c for lab in labels] for c in range(captions)])


def test_item_lists_hold_the_items_caption_first_then_its_hardest_wrong_captions() -> None:
    rel = label_relevance([0, 0, 1, 1, 2, 2], 3)
    dual = np.random.default_rng(1).random((3, 6)).astype(np.float32)
    (texts, items), = pair_lists(rel, dual, 5, "item", np.random.default_rng(0))
    assert texts.shape == items.shape == (6, 3)  # 5 asked, but each item has only 2 wrong captions
    assert (items == np.arange(6)[:, None]).all()
    assert rel[texts[:, 0], items[:, 0]].all() and not rel[texts[:, 1:], items[:, 1:]].any()
    negative_scores = dual[texts[:, 1:], items[:, 1:]]
    assert (negative_scores[:, 0] >= negative_scores[:, 1]).all()  # hardest first
    both = pair_lists(rel, dual, 2, "both", np.random.default_rng(0))
    assert [t.shape for t, _ in both] == [(3, 3), (6, 3)]  # captions ranking items, then items ranking captions
    with pytest.raises(TrainingError, match="queries"):
        pair_lists(rel, dual, 2, "images", np.random.default_rng(0))


@pytest.mark.integration  # trains a model until it has learned the task
def test_training_on_item_lists_finds_the_word_in_a_frame_sequence() -> None:
    """Audio-like toy: 4 words, 24 clips of 3 frames; a clip's word code sits in one frame, the others are noise;
    the dual scores are uninformative. Trained on item-asking lists, the re-ranker names each clip's word."""
    g = torch.Generator().manual_seed(0)
    words, width = 4, 20
    codes = torch.randn(words, width, generator=g)
    labels = [i % words for i in range(24)]
    maps = torch.randn(24, width, 1, 3, generator=g) * 0.1
    for i, lab in enumerate(labels):
        maps[i, :, 0, i % 3] += codes[lab]
    tokens, mask = codes[:, :12].unsqueeze(1), torch.ones(words, 1, dtype=torch.bool)
    rel = label_relevance(labels, words)
    dual = np.random.default_rng(0).random((words, 24)).astype(np.float32)
    config = RerankerConfig(text_dim=12, backbone_dim=width, regions=3, region_dim=8, layers=1, heads=2, dropout=0.0,
                            basis_dim=0, modality="audio")
    torch.manual_seed(0)
    net = CrossReranker(config)
    losses = train_reranker(net, RerankData(tokens, mask, maps.unsqueeze(0), rel, dual),
                            RerankSchedule(epochs=80, negatives=3, batch_size=8, lr=3e-3, queries="item"))
    assert losses[-1] < losses[0] / 2
    with torch.no_grad():
        scores = rerank_matrix(net, tokens, mask, net.project_regions(maps), dual, depth=words, text_queries=False)
    accuracy = (scores.argmax(axis=1) == np.array(labels)).mean()
    assert accuracy > 0.9 and accuracy > (dual.T.argmax(axis=1) == np.array(labels)).mean() + 0.3


class ToyStudent(torch.nn.Module):
    def __init__(self, width: int, dim: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(width, dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.head(features), dim=-1)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features, dim=-1)


@pytest.mark.integration  # trains a model until it has learned the task
def test_item_student_learns_the_teachers_known_ranking_of_captions() -> None:
    """Each item's list holds 4 captions in the teacher's order (logits 3, 2, 1, 0): the student's item head learns
    to rank them so."""
    g = torch.Generator().manual_seed(0)
    items, width = 8, 10  # as many feature dims as items: the head can place every item where it must
    pooled, sentences = torch.randn(1, items, width, generator=g), torch.randn(4, 5, generator=g)
    lists = torch.stack([torch.randperm(4, generator=g) for _ in range(items)])  # (G, 4) caption indices
    teacher = torch.tensor([3.0, 2.0, 1.0, 0.0]).expand(items, 4)
    torch.manual_seed(0)
    student = ToyStudent(width, 5)

    def order_agreement() -> float:
        with torch.no_grad():
            vecs = student.project(pooled[0])
            scores = torch.einsum("gd,gcd->gc", vecs, student.project_text(sentences[lists]))
        return float((scores.argsort(dim=1, descending=True) == torch.arange(4)).all(dim=1).float().mean())

    before = order_agreement()
    losses = train_item_student(student, student.project, pooled, sentences, lists, teacher,
                                RerankSchedule(epochs=150, batch_size=8, lr=3e-2, weight_decay=0.0), kl_weight=5.0)
    assert losses[-1] < losses[0] and order_agreement() >= 0.75 > before


def test_region_basis_fitted_on_fewer_cells_than_its_width_keeps_the_rest_zero() -> None:
    config = RerankerConfig(text_dim=12, backbone_dim=20, regions=3, region_dim=8, layers=1, heads=2, basis_dim=16,
                            modality="audio")
    net = CrossReranker(config)
    net.fit_basis(torch.randn(2, 20, 1, 3))  # 6 cells: at most 6 directions
    assert net.region_basis.shape == (20, 16) and torch.count_nonzero(net.region_basis[:, 6:]) == 0
    assert net.project_regions(torch.randn(4, 20, 1, 3)).shape == (4, 3, 8)
    with pytest.raises(ModelError, match="images only"):
        CrossReranker(RerankerConfig(modality="audio", concepts=1000))


def test_caption_offsets_leave_caption_rankings_alone_and_stop_a_hub_caption_topping_every_item() -> None:
    """Items at 20 and 70 degrees in a 2-d concept plane, their captions at -10 and 100 degrees, and a hub caption
    at 45 degrees, nearer to both items than their own captions: uncentred, both items rank the hub first.
    Centred on the reference items, each item ranks its own caption first."""
    config = RerankerConfig(text_dim=4, backbone_dim=6, regions=1, layers=0, concepts=2, concept_grid=1,
                            use_dual_score=False, references=2)
    net = CrossReranker(config).eval()
    net.set_concepts(torch.eye(2, 6), torch.zeros(2), torch.eye(2, 4))  # class c -> text direction c
    maps = torch.zeros(2, 6, 1, 1)
    maps[:, 1, 0, 0] = torch.tensor([-1.0, 1.0]) * float(np.log(np.tan(np.radians(70))))  # 20 and 70 degrees
    regions = net.project_regions(maps)
    net.set_references(regions)

    def at(degrees: float) -> list[float]:
        return [float(np.cos(np.radians(degrees))), float(np.sin(np.radians(degrees))), 0.0, 0.0]

    tokens = torch.tensor([[at(-10)], [at(100)], [at(45)]])  # captions of item 0, of item 1, the hub
    mask = torch.ones(3, 1, dtype=torch.bool)
    sim = np.zeros((3, 2), dtype=np.float32)
    with torch.no_grad():
        raw = net(tokens.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), regions.repeat(3, 1, 1)).view(3, 2)
    assert raw.argmax(dim=0).tolist() == [2, 2]  # uncentred, the hub tops both items' lists
    items_rank = rerank_matrix(net, tokens, mask, regions, sim, depth=3, text_queries=False)  # (items, captions)
    assert items_rank.argmax(axis=1).tolist() == [0, 1]
    captions_rank = rerank_matrix(net, tokens, mask, regions, sim, depth=2)
    assert captions_rank.argmax(axis=1).tolist() == raw.argmax(dim=1).tolist() == [0, 1, 0]
