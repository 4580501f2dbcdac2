"""Moving handwritten digits: a generated temporal task (no download) from scikit-learn's bundled ``load_digits``.

Each clip shows one 8x8 digit image (upscaled) travelling in a straight line across the frame, captioned with the
digit and the direction ("a seven moving up"). A clip and its reverse contain the same frames, so a model that
averages its frames can name the digit and the axis but not the direction: on four directions it is capped at
about half the captions (the direction-blind ceiling); a model that knows frame order can do better.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIRECTIONS = ("up", "down", "left", "right")


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) digit images in [0, 16] and their (1797,) classes, from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def caption(digit: int, direction: str) -> str:
    return f"a {WORDS[digit]} moving {direction}"


def clip_frames(image: np.ndarray, direction: str, frames: int = 16, size: int = 96, glyph: int = 32) -> np.ndarray:
    """(frames, size, size, 3) uint8 RGB: the 8x8 ``image`` scaled to ``glyph`` pixels, dark ink on white, moving
    from one edge towards the other in ``direction`` (one of :data:`DIRECTIONS`) at constant speed.

    Frame ``i`` shows the position at time ``i / frames`` of the clip, so the position at any sampled time of the
    reversed clip equals the position at the mirrored time of this one: uniform samples of a clip and of its
    reverse are the same set of frames."""
    from PIL import Image

    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    ink = Image.fromarray((255 - image * (255 / 16)).clip(0, 255).astype("uint8"), mode="L")
    sprite = np.asarray(ink.resize((glyph, glyph), Image.Resampling.BILINEAR))
    travel = size - glyph
    out = np.full((frames, size, size, 3), 255, dtype=np.uint8)
    for i in range(frames):
        step = round(travel * i / frames)
        along = {"up": travel - step, "down": step, "left": travel - step, "right": step}[direction]
        y, x = (along, travel // 2) if direction in ("up", "down") else (travel // 2, along)
        out[i, y:y + glyph, x:x + glyph] = sprite[..., None]
    return out


def write_clips(out: Path, images: np.ndarray, targets: np.ndarray, indices: Any, fps: float = 8.0,
                frames: int = 16, size: int = 96, suffix: str = ".mp4") -> list[dict[str, str]]:
    """One clip per (digit image, direction) under ``out/``; manifest rows (id, modality, path, text, label)
    with paths relative to ``out``'s parent (clips with one caption are relevant to each other in evaluation)."""
    from mmretrieval.media.video import write_clip

    rows = []
    for k in indices:
        d = int(targets[k])
        for direction in DIRECTIONS:
            name = f"digit{k:04d}_{direction}{suffix}"
            write_clip(out / name, clip_frames(images[k], direction, frames, size), fps=fps)
            rows.append({"id": f"clip_{k:04d}_{direction}", "modality": "video", "path": f"{out.name}/{name}",
                         "text": caption(d, direction), "label": ""})
    return rows
