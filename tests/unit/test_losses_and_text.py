import torch

from mmretrieval.media.text import normalize_caption, normalize_captions
from mmretrieval.models.losses import symmetric_info_nce


def test_info_nce_is_lower_for_aligned_pairs_than_for_shuffled_ones() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    eye = torch.eye(8, dtype=torch.bool)
    scale = torch.tensor(2.0)
    aligned = symmetric_info_nce(x, x, scale, eye)
    shuffled = symmetric_info_nce(x, x.roll(1, dims=0), scale, eye)
    assert aligned < shuffled


def test_info_nce_does_not_punish_shared_captions_as_negatives() -> None:
    """Items 0 and 1 carry the same caption: with the multi-positive mask, caption 1 near image 0 is no longer a
    negative, so the loss drops; image 2 lies near caption 0 and stays a real negative, so the loss is not zero."""
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.05, 0.0], [0.9, 0.0, 0.4]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.02, 0.0], [1.0, 0.02, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    scale = torch.tensor(3.0)
    only_diag = symmetric_info_nce(img, txt, scale, torch.eye(3, dtype=torch.bool))
    shared = torch.eye(3, dtype=torch.bool)
    shared[0, 1] = shared[1, 0] = True
    multi = symmetric_info_nce(img, txt, scale, shared)
    assert multi < only_diag - 0.3
    assert multi > 0.1


def test_captions_are_normalised_and_duplicates_merged() -> None:
    assert normalize_caption("  A\u0301  dog\x00\tbarks \u200b ") == "\u00c1 dog barks"
    assert normalize_caption("Hello", lowercase=True) == "hello"
    assert normalize_captions(["A dog", "a  dog", "", "  ", "A cat"]) == ["A dog", "A cat"]
    assert normalize_caption("مرحبا 👋") == "مرحبا 👋"  # right-to-left text and emoji survive


def test_triplet_loss_is_zero_when_every_negative_is_beyond_the_margin_and_positive_otherwise() -> None:
    from mmretrieval.models.losses import triplet_hardest

    eye = torch.eye(3)
    assert triplet_hardest(eye, eye, torch.eye(3, dtype=torch.bool), margin=0.2).item() == 0.0
    swapped = eye[[1, 0, 2]]
    assert triplet_hardest(eye, swapped, torch.eye(3, dtype=torch.bool), margin=0.2).item() > 0.5


def test_text_augmentation_is_seeded_and_keeps_short_captions() -> None:
    from mmretrieval.core.params import AugmentParams
    from mmretrieval.stages.augment import text_variants

    p = AugmentParams(text_variants=2, text_word_share=0.2)
    caps = ["a black dog runs along the sandy beach", "cat"]
    first = text_variants("id1", caps, p)
    assert first == text_variants("id1", caps, p)
    assert 1 <= len(first) <= 2 and all(v != caps[0] for v in first)
    assert "cat" not in first
