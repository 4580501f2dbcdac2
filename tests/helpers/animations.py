"""Animations whose first frames are blank (GIF, APNG, animated WebP), for the tests of the representative frame."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

SIZE = 96


def content(seed: int) -> Image.Image:
    """A distinct SIZE x SIZE picture per seed: a bar and a disc on white, placed and coloured by the seed."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([8 + 9 * seed, 8, 30 + 9 * seed, 88], fill=(20, 30, 40 * seed % 255))
    d.ellipse([50, 8 + 8 * seed, 90, 48 + 8 * seed], fill=(200, 40 * seed % 255, 30))
    return im


def fade_in(seed: int) -> list[Image.Image]:
    """White, white, the picture fading in, then the picture twice."""
    from PIL import Image

    white = Image.new("RGB", (SIZE, SIZE), "white")
    return [white, white, Image.blend(white, content(seed), 0.2), Image.blend(white, content(seed), 0.6),
            content(seed), content(seed)]


def save(frames: list[Image.Image], path: Path, **extra: object) -> Path:
    """``frames`` as one animation at ``path`` (format from the suffix; ``extra``: Pillow save options)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0, **extra)
    return path


def placeholder_apng(seed: int, path: Path) -> Path:
    """An APNG whose default image (shown by decoders without APNG support) is a white placeholder that is not part
    of the animation."""
    from PIL import Image

    return save([Image.new("RGB", (SIZE, SIZE), "white"), content(seed), content(seed)], path, default_image=True)
