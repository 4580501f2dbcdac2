"""Animations whose first frame is blank and blank pictures (mmretrieval.media.image, media.dedup): the frame that
represents an animation is chosen on purpose, a constant picture is never content and never merges items."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmretrieval.core.errors import MediaError
from mmretrieval.core.params import ValidateParams
from mmretrieval.media.dedup import dhash, find_duplicates
from mmretrieval.media.image import BlankImage, decode_image, image_problem, open_image, open_item_image
from tests.helpers.animations import SIZE, content, fade_in, placeholder_apng, save

WRITERS = {
    "gif": lambda seed, p: save(fade_in(seed), p / f"fade{seed}.gif"),
    "webp": lambda seed, p: save(fade_in(seed), p / f"fade{seed}.webp", lossless=True),
    "apng": lambda seed, p: placeholder_apng(seed, p / f"placeholder{seed}.png"),  # default image not animated
    "apng_fade": lambda seed, p: save(fade_in(seed), p / f"apng{seed}.png"),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_an_animation_is_represented_by_its_content_not_its_blank_first_frame(tmp_path: Path, kind: str) -> None:
    path = WRITERS[kind](1, tmp_path)
    decoded = decode_image(path)
    assert decoded.frames > 1 and decoded.frame > 0
    want = np.asarray(content(1), dtype=np.int16)
    got = np.asarray(decoded.image, dtype=np.int16)
    assert np.abs(got - want).max() <= (0 if kind != "gif" else 8)  # GIF: a palette of 256 colours
    assert image_problem(path, ValidateParams()) is None
    # every entry point (upload bytes, a PIL image a caller opened) decodes the same frame
    assert np.array_equal(np.asarray(open_image(path.read_bytes())), np.asarray(decoded.image))
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(open_image(im)), np.asarray(decoded.image))
        assert im.tell() == 0  # the caller's image is left at its frame


def test_an_apng_placeholder_is_skipped_even_when_it_has_the_most_detail(tmp_path: Path) -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    path = save([noisy, content(2), content(3)], tmp_path / "a.png", default_image=True)
    assert decode_image(path).frame >= 1
    assert np.abs(np.asarray(open_image(path), np.int16) - np.asarray(noisy, np.int16)).mean() > 20


@pytest.mark.parametrize("fill", ["white", "black", (128, 128, 128)])
def test_blank_stills_and_animations_are_quarantined_blank(tmp_path: Path, fill: object) -> None:
    blank = Image.new("RGB", (SIZE, SIZE), fill)  # type: ignore[arg-type]
    near = np.asarray(blank, dtype=np.int16) + np.random.default_rng(1).integers(-2, 3, (SIZE, SIZE, 3))
    paths = [tmp_path / "still.png", tmp_path / "near.png", tmp_path / "anim.gif"]
    blank.save(paths[0])
    smudge = Image.fromarray(np.clip(near, 0, 255).astype(np.uint8))
    smudge.save(paths[1])  # a faint smudge is still blank
    save([blank, smudge, blank], paths[2], lossless=True)
    assert decode_image(paths[2]).frames == 3
    for path in paths:
        problem = image_problem(path, ValidateParams())
        assert problem is not None and problem.reason == "blank_image", path.name
        with pytest.raises(BlankImage, match="blank picture"):
            open_item_image(path)
    assert "frame" in image_problem(paths[2], ValidateParams()).message  # type: ignore[union-attr]
    assert issubclass(BlankImage, MediaError) and BlankImage.reason == "blank_image"


def test_distinct_items_never_merge_through_blank_pictures() -> None:
    white = [Image.new("RGB", (SIZE, SIZE), (255, 255, 255)), Image.new("RGB", (SIZE + 4, SIZE), (253, 253, 253))]
    hashes = [dhash(im) for im in white]
    assert all(h.blank for h in hashes)
    assert find_duplicates(["a", "b"], hashes, max_distance=4) == []  # distinct files: kept apart
    assert [m.reason for m in find_duplicates(["same", "same"], hashes, max_distance=4)] == ["exact_duplicate"]
    pictures = [dhash(content(1)), dhash(content(1).resize((SIZE + 8, SIZE + 8)))]
    assert not any(h.blank for h in pictures)
    assert [m.reason for m in find_duplicates(["a", "b"], pictures, max_distance=4)] == ["near_duplicate"]


def test_choosing_a_frame_decodes_a_bounded_number_of_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmretrieval.media import image

    frames = [content(i % 6) for i in range(40)]
    path = save(frames, tmp_path / "long.gif")
    seen: list[int] = []
    real = image.detail
    monkeypatch.setattr(image, "detail", lambda im: seen.append(1) or real(im))
    decode_image(path)
    assert len(seen) == image.SAMPLED_FRAMES
    seen.clear()
    monkeypatch.setattr(image, "FRAME_PIXEL_BUDGET", 5 * SIZE * SIZE)  # only the first five frames are in reach
    assert decode_image(io.BytesIO(path.read_bytes()).getvalue()).frame < 5 and len(seen) == 5


def test_a_cut_off_animation_is_represented_by_a_frame_before_the_break(tmp_path: Path) -> None:
    whole = save(fade_in(1) + [content(2), content(3)], tmp_path / "whole.gif")
    cut = tmp_path / "cut.gif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.8)])
    decoded = decode_image(cut)
    assert decoded.frame > 0 and image_problem(cut, ValidateParams()) is None
