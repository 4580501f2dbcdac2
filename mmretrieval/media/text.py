"""The one text normalisation (pure functions): manifest captions (validate, clean), search queries
(:class:`~mmretrieval.serving.client.Query`) and filter values (:mod:`mmretrieval.serving.filters`) all go through
:func:`normalize_text`, so what is indexed is what a reader sees and what a query means.

Steps, in order:

1. NFC.
2. Bidirectional controls resolved to what displays: a run under a directional override (RLO U+202E or LRO U+202D,
   up to its PDF U+202C or the end of the line) is laid out in the override's direction whatever its letters are,
   so a Latin run under RLO displays reversed ("\u202eeeffoc" shows "coffee") and an Arabic or Hebrew run under LRO
   does too: such a run is reversed (grapheme clusters kept whole, mirrored brackets swapped). Then every
   embedding, override, isolate and mark (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) is removed.
3. Control characters: tab, line and paragraph breaks become spaces; every other C0/C1 control (NUL, BEL, ESC,
   DEL, U+0080-U+009F) is removed, so the text is fixed, never rejected.
4. Invisible characters: the zero-width family (U+200B, U+2060-U+2064, U+FEFF, U+180E, soft hyphen, CGJ, ...) is
   removed; the zero-width joiner and non-joiner are kept where they join two visible non-ASCII characters (an emoji
   ZWJ sequence, Persian or Indic script) and removed elsewhere; variation selectors and tag characters are kept only
   after a visible character (emoji presentation, flag tag sequences). Blank-looking letters (Hangul fillers U+3164,
   U+FFA0 and, outside a conjoining jamo sequence, U+115F, U+1160; Braille blank U+2800) become spaces.
5. Whitespace collapsed and stripped; a text without a letter, digit, punctuation or symbol left is empty.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

OVERRIDES = {"\u202d": "L", "\u202e": "R"}  # LRO, RLO
EMBEDDINGS = ("\u202a", "\u202b")  # LRE, RLE: closed by PDF, change no order of strong letters
PDF = "\u202c"
ISOLATES = ("\u2066", "\u2067", "\u2068")  # LRI, RLI, FSI: closed by PDI
PDI = "\u2069"
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029")  # end a bidi paragraph / line
WHITE_CONTROLS = frozenset("\t") | LINE_BREAKS  # controls that separate words: become a space
# default-ignorable characters that display as nothing (zero-width family, invisible operators, fillers of no use)
ZERO_WIDTH = frozenset("\u200b\u2060\u2061\u2062\u2063\u2064\ufeff\u180e\u00ad\u034f\u17b4\u17b5\u206a\u206b"
                       "\u206c\u206d\u206e\u206f\ufff9\ufffa\ufffb") | \
    frozenset(chr(c) for c in [*range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B)])
JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: meaningful between two visible non-ASCII characters only
BLANK_LETTERS = frozenset("\u3164\uffa0\u2800")  # Hangul filler, halfwidth Hangul filler, Braille blank
JAMO_FILLERS = frozenset("\u115f\u1160")  # Hangul choseong / jungseong fillers: part of old-Hangul jamo sequences
MIRRORED = dict(zip("()[]{}<>«»‹›", ")(][}{><»«›‹", strict=True))
_SPACE = re.compile(r"\s+")


def _is_control(ch: str) -> bool:
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F


def _is_selector(ch: str) -> bool:
    o = ord(ch)
    return 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF or 0xE0000 <= o <= 0xE007F


def _is_modifier(ch: str) -> bool:
    return 0x1F3FB <= ord(ch) <= 0x1F3FF  # emoji skin tones: visible alone, part of the emoji before them


def _is_jamo(ch: str) -> bool:
    o = ord(ch)
    return 0x1100 <= o <= 0x11FF or 0xA960 <= o <= 0xA97F or 0xD7B0 <= o <= 0xD7FF


def _visible(ch: str) -> bool:
    """A character that shows something: a letter, mark, digit, punctuation or symbol (not a blank letter)."""
    return bool(ch) and ch not in BLANK_LETTERS and ch not in JAMO_FILLERS and \
        unicodedata.category(ch)[0] in "LMNPS"


@dataclass
class _Run:
    opener: str  # the control that opened it ("" for the paragraph)
    chars: list[str]


def _direction(chars: list[str]) -> str:
    """"R" when most of the strong letters are right-to-left, else "L"."""
    rtl = ltr = 0
    for ch in chars:
        kind = unicodedata.bidirectional(ch)
        rtl += kind in ("R", "AL")
        ltr += kind == "L"
    return "R" if rtl > ltr else "L"


def _clusters(chars: list[str]) -> list[str]:
    """Grapheme-like clusters: a base with its combining marks, selectors and ZWJ-joined followers."""
    out: list[str] = []
    glue = False
    for ch in chars:
        if out and (glue or unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Mc")
                    or _is_selector(ch) or _is_modifier(ch) or ch in JOINERS):
            out[-1] += ch
        else:
            out.append(ch)
        glue = ch == "\u200d"
    return out


def _displayed(run: _Run) -> list[str]:
    """The characters of a closed run in reading order: an override opposite to its letters' direction reverses it."""
    forced = OVERRIDES.get(run.opener)
    if forced is None or _direction(run.chars) == forced:
        return run.chars
    return [MIRRORED.get(c, c) for c in "".join(reversed(_clusters(run.chars)))]


def resolve_bidi(text: str) -> str:
    """``text`` with directional overrides resolved to display order and every bidi control removed."""
    if not any(ch in BIDI_CONTROLS for ch in text):
        return text
    stack = [_Run("", [])]

    def close() -> None:
        run = stack.pop()
        stack[-1].chars.extend(_displayed(run))

    for ch in text:
        if ch in OVERRIDES or ch in EMBEDDINGS or ch in ISOLATES:
            stack.append(_Run(ch, []))
        elif ch == PDF:
            if len(stack) > 1 and stack[-1].opener not in ISOLATES:
                close()
        elif ch == PDI:
            if any(r.opener in ISOLATES for r in stack[1:]):
                while stack[-1].opener not in ISOLATES:
                    close()
                close()
        elif ch in LINE_BREAKS:  # a paragraph ends every open run
            while len(stack) > 1:
                close()
            stack[-1].chars.append(ch)
        elif ch not in BIDI_CONTROLS:  # marks (LRM, RLM, ALM) are dropped
            stack[-1].chars.append(ch)
    while len(stack) > 1:
        close()
    return "".join(stack[0].chars)


def _drop_invisible(text: str) -> str:
    """Step 3 and 4 of the module's normalisation: controls and invisible characters."""
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch in WHITE_CONTROLS:
            out.append(" ")
        elif _is_control(ch) or ch in ZERO_WIDTH:
            continue
        elif ch in BLANK_LETTERS:
            out.append(" ")
        elif ch in JOINERS:
            before = out[-1] if out else ""
            after = next((c for c in text[i + 1:] if not _is_selector(c)), "")
            if _visible(before) and _visible(after) and ord(before) > 0x7F and ord(after) > 0x7F:
                out.append(ch)
        elif _is_selector(ch):
            if out and _selects(out[-1], ch, text[i + 1:i + 2]):
                out.append(ch)
        else:
            out.append(ch)
    return "".join(out)


def _jamo_fillers(text: str) -> str:
    """Hangul choseong/jungseong fillers as spaces, but inside a conjoining jamo sequence (after NFC composed what
    it could: a filler never composes)."""
    if not any(ch in JAMO_FILLERS for ch in text):
        return text
    out = list(text)
    for i, ch in enumerate(text):
        if ch in JAMO_FILLERS:
            near = (text[i - 1] if i else "") + (text[i + 1] if i + 1 < len(text) else "")
            if not any(_is_jamo(c) and c not in JAMO_FILLERS for c in near):
                out[i] = " "
    return "".join(out)


def _selects(before: str, ch: str, after: str) -> bool:
    """Whether selector or tag ``ch`` after ``before`` (the last kept character) changes what displays: a variation
    selector after a visible non-ASCII character or starting a keycap (``1`` VS16 U+20E3), a tag after a black
    flag or another tag (a subdivision flag)."""
    if 0xE0000 <= ord(ch) <= 0xE007F:
        return before == "\U0001f3f4" or 0xE0020 <= ord(before) <= 0xE007F
    if ord(before) > 0x7F:
        return _visible(before) or _is_selector(before)
    return before in "0123456789#*" and after == "\u20e3"


def normalize_text(text: str, lowercase: bool = False) -> str:
    """``text`` as displayed and meant (see the module): NFC, bidi resolved, controls and invisible characters
    removed, blank letters as spaces, whitespace collapsed; ``""`` when nothing visible is left. Never raises."""
    text = str(text)
    if text.isascii() and text.isprintable():  # the common case: nothing to compose, resolve or drop
        text = _SPACE.sub(" ", text).strip()
        return text.lower() if lowercase else text
    text = unicodedata.normalize("NFC", text)
    text = unicodedata.normalize("NFC", _drop_invisible(resolve_bidi(text)))  # again: a mark may meet its letter
    text = _jamo_fillers(text)
    text = _SPACE.sub(" ", text).strip()
    if not any(_visible(ch) for ch in text):
        return ""
    return text.lower() if lowercase else text


def normalize_caption(text: str, lowercase: bool = False) -> str:
    """A caption: :func:`normalize_text`."""
    return normalize_text(text, lowercase)


def changed_by_normalisation(text: str) -> bool:
    """Whether :func:`normalize_text` changes more than surrounding or repeated whitespace of ``text`` (a caption
    that held a control, bidi or invisible character, or was not NFC)."""
    return normalize_text(text) != _SPACE.sub(" ", str(text)).strip()


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


def normalize_metadata(metadata: str) -> str:
    """A row's metadata JSON object with each string value through :func:`normalize_text` (keys as they are), so a
    ``where`` filter (normalised the same way) matches what displays. Text that is not a JSON object is returned
    as it is."""
    import json

    try:
        values = json.loads(metadata or "{}")
    except ValueError:
        return metadata
    if not isinstance(values, dict):
        return metadata
    return json.dumps({k: normalize_text(v) if isinstance(v, str) else v for k, v in values.items()},
                      ensure_ascii=False)


def count_fixed_captions(texts: list[str]) -> int:
    """How many of ``texts`` (each ``"a ||| b"``) hold a caption that :func:`normalize_text` changes beyond
    whitespace: the captions clean fixed (a control, bidi or invisible character removed, NFD composed)."""
    from mmretrieval.core.schema import split_captions

    return sum(any(changed_by_normalisation(c) for c in split_captions(t)) for t in texts)
