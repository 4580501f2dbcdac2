"""Search filters as Milvus boolean expressions, built from structured parts so users need no expression syntax.

Pure functions (no Milvus import). :func:`build_filter` joins the parts with ``and``, each in its own parentheses::

    build_filter(modality="text", expr='label == "7" or label == "1"')
    -> 'modality == "text" and (label == "7" or label == "1")'
    build_filter(labels=["7", "1"], where={"source": 'say "hi"'})
    -> 'label in ["7", "1"] and metadata["source"] == "say \\"hi\\""'

Label and metadata values are first normalised like captions (:func:`mmretrieval.media.text.normalize_text`:
bidi overrides resolved, control and invisible characters removed), as clean normalises the stored ones, so a value
matches what displays. Every value is quoted and escaped (backslash, double quote, control characters), so a label
or a metadata value can never end the string and inject an expression.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmretrieval.core.errors import QueryError
from mmretrieval.media.text import normalize_text

MAX_EXPRESSION_CHARS = 4000  # characters of a user expression (Milvus parses far longer; people do not write them)
MAX_QUERY_LABELS = 1000  # labels in one library query (the HTTP request allows fewer: http.schemas.MAX_REQUEST_LABELS)


def quote(value: str) -> str:
    """``value`` as a double-quoted Milvus string literal (JSON-style escapes)."""
    out = ['"']
    for ch in str(value):
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


PAIRS = {")": "(", "]": "[", "}": "{"}


def bracket_problem(expr: str) -> str | None:
    """Why ``expr``'s brackets do not pair up outside its string literals ("..." or '...', backslash escapes), or
    None. A filter like ``a == 1) or (b == 2`` would otherwise close the parentheses :func:`build_filter` puts
    around it and escape the other conditions."""
    stack: list[str] = []
    quote_char = ""
    escaped = False
    for ch in expr:
        if quote_char:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote_char:
                quote_char = ""
        elif ch in "\"'":
            quote_char = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in PAIRS:
            if not stack or stack.pop() != PAIRS[ch]:
                return f"closes a {ch!r} that it did not open"
    if quote_char:
        return f"leaves a {quote_char} string open"
    if stack:
        return f"leaves {len(stack)} bracket(s) open"
    return None


def build_filter(modality: str | None = None, expr: str = "", labels: Sequence[str] = (),
                 where: Mapping[str, str] | None = None) -> str:
    """One Milvus expression: ``modality == "m" and label in [...] and metadata["k"] == "v" and (<expr>)``.

    ``expr`` is the user's raw expression (kept for power users) and always goes in parentheses, so an ``or``
    inside it cannot escape the other conditions. An empty result means no filter. Label and metadata values are
    normalised (:func:`~mmretrieval.media.text.normalize_text`). Raises :class:`QueryError` for an empty metadata
    key, a NUL character in a key or ``expr``, too many labels or an expression longer than
    :data:`MAX_EXPRESSION_CHARS`.
    """
    parts: list[str] = []
    if modality:
        parts.append(f"modality == {quote(modality)}")
    if len(labels) > MAX_QUERY_LABELS:
        raise QueryError(f"{len(labels)} labels given; the limit is {MAX_QUERY_LABELS}")
    for value in [*labels, *(where or {}).keys(), *(where or {}).values(), expr]:
        if "\x00" in str(value):  # validate quarantines such labels and values: refused, not matched cleaned
            raise QueryError(f"filter value {str(value)!r} contains a NUL character")
    # values normalised as clean normalises labels and metadata values (mmretrieval.media.text)
    labels = [normalize_text(str(v)) for v in labels]
    where = {k: normalize_text(str(v)) for k, v in (where or {}).items()}
    if labels:
        parts.append(f"label == {quote(labels[0])}" if len(labels) == 1 else
                     "label in [" + ", ".join(quote(v) for v in dict.fromkeys(labels)) + "]")
    for key, value in (where or {}).items():
        if not str(key).strip():
            raise QueryError(f"a metadata filter needs a key: got {key!r}={value!r}")
        parts.append(f"metadata[{quote(str(key))}] == {quote(str(value))}")
    expr = (expr or "").strip()
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise QueryError(f"the filter has {len(expr)} characters; the limit is {MAX_EXPRESSION_CHARS}")
    if expr and (problem := bracket_problem(expr)):
        raise QueryError(f"the filter {expr[:80]!r} {problem}")
    if expr:
        parts.append(f"({expr})" if parts else expr)
    return " and ".join(parts)


def parse_where(items: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` (the CLI's ``--where``) -> a dict; the first ``=`` splits. Raises :class:`QueryError`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QueryError(f"--where {item!r} is not KEY=VALUE (e.g. --where source=flickr)")
        out[key.strip()] = value
    return out
