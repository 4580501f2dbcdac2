"""Query images decoded at the size the model needs (``open_image(max_side=...)``): JPEG by DCT scaling, other
formats reduced right after decoding, every mode; the picture the model then sees is the same up to rounding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmretrieval.media.image import open_image


def picture(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // w), (y * 255 // h), ((x + y) % 97) * 2], axis=-1).astype(np.uint8)


def encoded(im: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


def model_view(im: Image.Image) -> np.ndarray:
    """What the model resizes a 4:3 picture to (short side 150), antialiased."""
    return np.asarray(im.resize((200, 150), Image.Resampling.BILINEAR), dtype=np.float64)


@pytest.mark.parametrize("fmt,mode", [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("PNG", "1"),
                                      ("PNG", "I;16"), ("JPEG", "RGB"), ("JPEG", "L"), ("WEBP", "RGB"),
                                      ("TIFF", "F")])
def test_a_large_query_is_decoded_small_and_the_model_sees_the_same_picture(fmt: str, mode: str) -> None:
    source = Image.fromarray(picture(1600, 1200))
    source = source.convert(mode) if mode not in ("I;16", "F") else source.convert("L").convert(mode)
    data = encoded(source, fmt)
    full = open_image(data)
    small = open_image(data, max_side=300)
    assert full.size == (1600, 1200) and small.mode == "RGB"
    assert 300 <= min(small.size) < 2 * 300, small.size  # reduced, never below what the model needs
    assert abs(small.size[0] / small.size[1] - 4 / 3) < 0.01
    diff = np.abs(model_view(full) - model_view(small))
    assert float(diff.mean()) < 3.0, (fmt, mode, float(diff.mean()))


def test_a_small_query_is_left_as_it_is() -> None:
    data = encoded(Image.fromarray(picture(600, 500)), "PNG")
    assert np.array_equal(np.asarray(open_image(data, max_side=448)), np.asarray(open_image(data)))
