"""clean.image_short_side / image_max_side: the size clean scales an image down to; train.caption_draws."""

from __future__ import annotations

import pytest

from mmretrieval.media.image import clean_size


@pytest.mark.parametrize(("size", "expected"), [
    ((500, 375), (341, 256)),  # a 4:3 Flickr photo: the shorter side to 256, the tower's resize needs no upscaling
    ((375, 500), (256, 341)),  # portrait: the same, turned
    ((4032, 2268), (455, 256)),  # 16:9
    ((300, 200), (300, 200)),  # already small enough: never enlarged
    ((5000, 300), (1024, 61)),  # a long strip: the longer side's bound wins
    ((256, 256), (256, 256)),
    ((10000, 3), (1024, 1)),  # no side below 1 pixel
])
def test_the_shorter_side_is_bounded_and_the_aspect_kept(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert clean_size(size, 256, 1024) == expected


def test_caption_draws_sets_how_often_an_item_with_several_captions_is_drawn_per_epoch() -> None:
    import torch

    from mmretrieval.training.data import FeatureDataset

    feats, members = torch.zeros(2, 3, 4), [7, 8, 9]
    captions = {7: ["a", "b", "c"], 8: ["d"], 9: ["e", "f", "g", "h", "i", "j"]}
    caps = [captions.get(i, []) for i in range(10)]
    assert FeatureDataset(feats, members, caps).members == [7, 8, 9]  # train.caption_draws: 1, every item once
    assert FeatureDataset(feats, members, caps, draws=5).members == [7] * 3 + [8] + [9] * 5
    with pytest.raises(ValueError, match="draws must be at least 1, got 0"):
        FeatureDataset(feats, members, caps, draws=0)
