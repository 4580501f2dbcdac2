"""Caption normalisation (pure functions)."""

from __future__ import annotations

import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2028\u2029\ufeff]")
_SPACE = re.compile(r"\s+")


def normalize_caption(text: str, lowercase: bool = False) -> str:
    """NFC, control characters removed, whitespace collapsed, optionally lowercased."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text


def normalize_captions(captions: list[str], lowercase: bool = False) -> list[str]:
    """Normalise each caption, drop empty ones and merge duplicates (case-insensitive), keeping first order."""
    seen: set[str] = set()
    out: list[str] = []
    for c in captions:
        n = normalize_caption(c, lowercase)
        key = n.casefold()
        if n and key not in seen:
            seen.add(key)
            out.append(n)
    return out
