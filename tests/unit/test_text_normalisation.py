"""The one text normalisation (mmretrieval.media.text) for captions, queries and filter values: bidi controls,
control characters, invisible letters, the zero-width family and joiners inside emoji, each class on its own."""

from __future__ import annotations

import json

import pytest

from mmretrieval.core.errors import QueryError
from mmretrieval.media.text import (
    count_fixed_captions,
    normalize_captions,
    normalize_metadata,
    normalize_text,
    resolve_bidi,
)
from mmretrieval.serving.client import Query


@pytest.mark.parametrize(("raw", "shown"), [
    ("a cup of \u202eeeffoc", "a cup of coffee"),  # RLO over Latin displays reversed: index what displays
    ("\u202eeeffoc fo puc a", "a cup of coffee"),
    ("a \u202eeeffoc\u202c cup", "a coffee cup"),  # PDF ends the override
    ("\u202e(eeffoc)", "(coffee)"),  # brackets under an override are mirrored glyphs
    ("\u202e\u05e9\u05dc\u05d5\u05dd", "\u05e9\u05dc\u05d5\u05dd"),  # RLO over Hebrew changes nothing a reader sees
    ("\u202d\u05dd\u05d5\u05dc\u05e9", "\u05e9\u05dc\u05d5\u05dd"),  # LRO over Hebrew lays it out reversed
    ("\u202dplain\u202c text", "plain text"),  # LRO over Latin: as stored
    ("\u202eabc\ndef", "cba def"),  # a line break ends the override's paragraph
    ("x\u202eq\u0301ba", "xabq\u0301"),  # a letter and its combining accent (no precomposed form) move together
    ("\u202e\U0001f44d\U0001f3fd ko", "ok \U0001f44d\U0001f3fd"),  # an emoji with its skin tone stays whole
])
def test_a_directional_override_is_indexed_as_it_displays(raw: str, shown: str) -> None:
    assert normalize_text(raw) == shown


@pytest.mark.parametrize("control", ["\u202a", "\u202b", "\u202c", "\u2066", "\u2067", "\u2068", "\u2069",
                                     "\u200e", "\u200f", "\u061c"])
def test_embeddings_isolates_and_marks_are_removed(control: str) -> None:
    assert normalize_text(f"a {control}cup{control} of coffee") == "a cup of coffee"
    assert normalize_text(control) == ""


def test_an_isolate_keeps_an_override_inside_it_and_closes_it() -> None:
    assert resolve_bidi("\u2067\u202ecba\u2069 d") == "abc d"  # PDI closes the override opened inside the isolate
    assert resolve_bidi("plain") == "plain"


@pytest.mark.parametrize(("raw", "fixed"), [
    ("a\x00b", "ab"), ("bell\x07", "bell"), ("\x1b]0;title\x07cat", "]0;titlecat"), ("\x1b[2Jdog", "[2Jdog"),
    ("del\x7f", "del"), ("c1\x85next", "c1 next"), ("csi\x9b31m", "csi31m"), ("tab\there", "tab here"),
    ("line\r\nbreak", "line break"), ("para\u2029graph", "para graph"),
])
def test_control_characters_are_removed_and_the_caption_kept(raw: str, fixed: str) -> None:
    assert normalize_text(raw) == fixed
    assert normalize_captions([raw]) == [fixed]


@pytest.mark.parametrize("blank", ["\u3164", "\u115f", "\u1160", "\uffa0", "\u2800"])
def test_blank_letters_are_not_content(blank: str) -> None:
    assert normalize_text(blank * 3) == ""  # empty, like a caption of zero-width spaces
    assert normalize_captions([blank * 5, "a dog"]) == ["a dog"]
    assert normalize_text(f"a{blank}dog") == "a dog"  # shows as a blank: a space


def test_a_jamo_filler_inside_an_old_hangul_syllable_is_kept() -> None:
    syllable = "\u115f\u1161"  # choseong filler + jungseong A: a conjoining jamo sequence
    assert normalize_text(syllable) == syllable


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e",
                                       "\u2062", "\u034f", "\ufe0f", "\U000e0041"])
def test_the_zero_width_family_is_removed_and_alone_is_empty(invisible: str) -> None:
    assert normalize_text(invisible * 4) == ""
    assert normalize_text(f"cof{invisible}fee") == "coffee"


@pytest.mark.parametrize("sequence", [
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag: selector then joiner
    "\U0001f469\U0001f3fd\u200d\U0001f4bb",  # technologist with a skin tone
    "\u2764\ufe0f",  # heart with emoji presentation
    "1\ufe0f\u20e3",  # keycap one
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # Scotland: a tag sequence
])
def test_emoji_sequences_survive_whole(sequence: str) -> None:
    assert normalize_text(f"a {sequence} here") == f"a {sequence} here"


def test_the_non_joiner_of_persian_is_kept_between_letters() -> None:
    word = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # mi-khaham: ZWNJ inside the word
    assert normalize_text(word) == word
    assert normalize_text("\u200c\u0645") == "\u0645"  # at an edge it joins nothing


def test_nfc_lowercase_and_whitespace() -> None:
    assert normalize_text("  Cafe\u0301   Noir ") == "Caf\u00e9 Noir"
    assert normalize_text("Cafe\u0301", lowercase=True) == "caf\u00e9"
    assert normalize_text("\u3000\u00a0 ") == ""


def test_fixed_captions_are_counted() -> None:
    texts = ["a\x00b ||| fine", "fine ||| also fine", "\u202eeeffoc", "  spaces   only  differ ", "e\u0301"]
    assert count_fixed_captions(texts) == 3


def test_metadata_values_are_normalised_and_keys_kept() -> None:
    out = json.loads(normalize_metadata(json.dumps({"src\u200b": "fl\u200bickr", "n": 3, "x": "\u202ebat"})))
    assert out == {"src\u200b": "flickr", "n": 3, "x": "tab"}
    assert normalize_metadata("not json") == "not json"


def _query(text: str) -> Query:
    return Query.checked(text, None, None, k=5, modality=None, filter="", labels=[], where=None, weights=None,
                         fusion="vector", rerank=None)


def test_a_search_query_is_normalised_like_a_caption() -> None:
    assert _query("a cup of \u202eeeffoc\x07").text == "a cup of coffee"
    assert _query("\U0001f468\u200d\U0001f469").text == "\U0001f468\u200d\U0001f469"
    for blank in ("\u3164\u3164", "\u200b", "\x00\x07"):
        with pytest.raises(QueryError, match="empty"):
            _query(blank)


def test_normalising_twice_changes_nothing() -> None:
    """Clean stores normalised captions that evaluation and merging normalise again: it must be idempotent, also
    when a removed control brings a mark to its letter or a filler to a jamo sequence."""
    import random

    alphabet = [*"ab (é1", "\u0645", "\u05d0", "\U0001f468", "\U0001f3fd", "\u200d", "\u200c", "\u200b", "\ufe0f",
                "\u20e3", "\u202e", "\u202d", "\u202c", "\u2066", "\u2069", "\x00", "\x07", "\n", "\u3164", "\u115f",
                "\u1160", "\u1100", "\u1161", "\u11a8", "\u2800", "\U000e0067", "\U0001f3f4", "\u0301", "\u00ad"]
    rng = random.Random(7)
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        once = normalize_text(text)
        assert normalize_text(once) == once, repr(text)


def test_printable_ascii_takes_the_short_path_with_the_same_result_as_the_full_one() -> None:
    """normalize_text returns early for printable ASCII (most captions, labels and metadata values at scale); the
    full pipeline (NFC, bidi, invisible characters, jamo fillers) must give the same text for every such input."""
    import random
    import string
    import unicodedata

    from mmretrieval.media import text as t

    def full(s: str, lowercase: bool) -> str:
        s = unicodedata.normalize("NFC", t._drop_invisible(t.resolve_bidi(unicodedata.normalize("NFC", s))))
        s = t._SPACE.sub(" ", t._jamo_fillers(s)).strip()
        if not any(t._visible(ch) for ch in s):
            return ""
        return s.lower() if lowercase else s

    rng = random.Random(0)
    samples = ["", " ", "   ", "A Dog  runs ", "|||", *string.printable[:95]]
    samples += ["".join(rng.choice(string.printable[:95]) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    for s in samples:
        for lowercase in (False, True):
            assert normalize_text(s, lowercase) == full(s, lowercase), repr(s)
    assert normalize_text("tab\there") == "tab here"  # not printable: the full path, same collapse
