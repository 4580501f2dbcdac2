"""Cheap checks of a request's content before any work: a filter's complexity, an uploaded image's header."""

from __future__ import annotations

import io
import re

from mmretrieval.serving.http.schemas import MAX_FILTER_DEPTH, MAX_FILTER_TERMS


def filter_problem(expr: str) -> str | None:
    """Why a filter is too complex to run (a cheap count before Milvus parses it), or ``None``."""
    terms = len(re.findall(r"\b(?:and|or|not|in|like)\b|&&|\|\||[=!<>]=?", expr, flags=re.IGNORECASE))
    if terms > MAX_FILTER_TERMS:
        return f"the filter has {terms} comparisons and operators; the limit is {MAX_FILTER_TERMS}"
    depth = deepest = 0
    for ch in expr:
        depth += ch in "([{"
        depth -= ch in ")]}"
        deepest = max(deepest, depth)
    if deepest > MAX_FILTER_DEPTH:
        return f"the filter nests {deepest} deep; the limit is {MAX_FILTER_DEPTH}"
    if expr.count(",") > 4 * MAX_FILTER_TERMS:
        return f"the filter lists {expr.count(',') + 1} values; the limit is {4 * MAX_FILTER_TERMS}"
    return None


def image_header_problem(data: bytes, max_pixels: int, min_side: int, max_aspect: float) -> str | None:
    """Check an uploaded image's declared size (pixels, shortest side in pixels, long/short side ratio) from its
    header alone (nothing is decoded); the reason it is refused, or ``None`` (also for bytes PIL cannot identify:
    the decoder explains those)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        return f"the image header declares more than {max_pixels} pixels"
    except (OSError, ValueError, SyntaxError):
        return None  # not an image PIL recognises: the decoder says why
    if w * h > max_pixels:
        return f"the image is {w}x{h} ({w * h} pixels); the limit is {max_pixels} pixels"
    if min(w, h) < min_side:
        return f"the image is {w}x{h}; each side must be at least {min_side} pixels"
    if max(w, h) > max_aspect * min(w, h):
        return f"the image is {w}x{h}; its long side may be at most {max_aspect:g} times its short side"
    return None
