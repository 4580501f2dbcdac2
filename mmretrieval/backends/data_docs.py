"""The validation's data docs page: Great Expectations' rendering of the suite's result, made self-contained.

One HTML file, ``Layout.data_docs`` (``data/validated/<dataset>/``), written for passing *and* failing
validations, that opens from disk, an MLflow artifact view or an Airflow log link with no network:

* GX's page (``ValidationResultsPageRenderer`` + ``DefaultJinjaPageView``) loads Bootstrap, jQuery, Vega, Font
  Awesome and its logo from CDNs and links to a data docs site that does not exist here (Home, the suite page):
  every external ``<link>``/``<script>``/``<img>`` and every script is removed, relative links point inside the page,
  and a small stylesheet is inlined instead (the content is plain HTML, so nothing is lost but the styling);
* a summary on top says what GX's page cannot: the dataset and its DVC data version, the verdict (and the hard
  failure that stopped the pipeline), every expectation of the suite with its outcome, and the media and row
  checks mmretrieval runs after the suite, with how many rows each one quarantined.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

# The checks run after the GX suite (validate.py), by modality, with the reason codes they quarantine rows with.
MEDIA_CHECKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("all", "field sizes fit the index (UTF-8 bytes per column, metadata JSON), no NUL characters (but in text: clean "
     "removes control characters from captions)",
     ("field_too_long", "caption_too_long", "metadata_too_large", "nul_character")),
    ("image/audio/video", "the path is relative, inside the dataset and names an existing file",
     ("empty_path", "absolute_path", "parent_path", "path_escape", "missing_file")),
    ("image/audio/video", "the file is not empty and not above validate.max_file_bytes",
     ("empty_file", "file_too_large")),
    ("image/audio/video", "the file's SHA-256 is the manifest's sha256, when one is given", ("sha256_mismatch",)),
    ("image", "decodes within the pixel limit (an animation: its most detailed frame), not flattened to a constant, "
     "not too small, not blank", ("undecodable", "flattened_image", "image_too_small", "blank_image")),
    ("audio", "decodes, has samples, no NaN, duration/channels/rate in bounds, not silent, not clipped",
     ("undecodable", "empty_audio", "nan_samples", "audio_too_short", "audio_too_long", "too_many_channels",
      "bad_sample_rate", "silent_audio", "clipped_audio")),
    ("video", "its K frames decode by seeking, within the length and size limits, and are not all one picture",
     ("undecodable", "video_too_long", "video_too_large", "frozen_video")),
    ("text", "a text item has visible text (invisible characters do not count)", ("empty_text",)),
)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem;
color:#212529;background:#fff;line-height:1.45}
table{border-collapse:collapse;margin:.5rem 0 1rem;width:100%}th,td{border:1px solid #dee2e6;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f1f3f5}
.mmr-summary{border:2px solid #adb5bd;border-radius:6px;padding:.5rem 1rem;margin-bottom:1.5rem}
.mmr-pass{color:#137333;font-weight:600}.mmr-fail{color:#b3261e;font-weight:600}.mmr-none{color:#6c757d}
.alert{background:#f8f9fa;border:1px solid #dee2e6;border-radius:4px;padding:.5rem}
.text-success{color:#137333}.text-danger{color:#b3261e}.h6,h5{font-weight:600}
.card{border:1px solid #dee2e6;border-radius:4px;margin:.75rem 0;padding:.5rem}
.badge{display:inline-block;padding:0 .35rem;border-radius:3px;background:#e9ecef}
code{background:#f1f3f5;padding:0 .2rem}ul{margin:.25rem 0}.navbar,.sticky,footer{display:none}
"""

_EXTERNAL_TAG = re.compile(r"<(link|img)\b[^>]*>", re.I)
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.I | re.S)
_CSS_URL = re.compile(r"url\(\s*(?!['\"]?data:)[^)]*\)", re.I)  # inline styles' images, fonts (not data: URIs)
_RELATIVE_HREF = re.compile(r'href="(?!#|https?:|mailto:)[^"]*"', re.I)


def offline(page: str) -> str:
    """GX's page without anything loaded from elsewhere: no ``<script>`` at all, no ``<link>`` or ``<img>``
    (stylesheets, favicon, logo), no CSS ``url(...)`` but ``data:`` ones, relative links (Home, the suite page of a
    data docs site) turned into ``#``."""
    page = _SCRIPT.sub("", page)
    page = _EXTERNAL_TAG.sub("", page)
    page = _CSS_URL.sub("none", page)
    return _RELATIVE_HREF.sub('href="#"', page)


def _cell(value: Any) -> str:
    return html.escape(str(value))


def summary_html(dataset: str, data_version: str, status: str, errors: Sequence[str],
                 expectations: Sequence[Mapping[str, Any]], reasons: Mapping[tuple[str, str], int],
                 rows: int | None, valid: int | None, media_checked: bool) -> str:
    """The page's top section (an HTML fragment): dataset, data version, verdict, hard errors, one row per
    expectation, one row per media/row check with the rows it quarantined (``reasons``: (modality, reason code)
    -> rows; a check counts the rows of its modalities only)."""
    verdict = "mmr-pass" if status == "passed" else "mmr-fail"
    out = [f'<section class="mmr-summary" id="mmr-summary"><h2>Validation of dataset <code>{_cell(dataset)}</code>'
           f"</h2><p>Data version (DVC): <code>{_cell(data_version)}</code><br>Verdict: "
           f'<span class="{verdict}">{_cell(status)}</span>'
           + (f" &mdash; {valid} of {rows} rows usable, {rows - valid} quarantined" if rows is not None and
              valid is not None else "") + "</p>"]
    if errors:
        out.append("<p class=\"mmr-fail\">The pipeline stopped here:</p><ul>"
                   + "".join(f"<li>{_cell(e)}</li>" for e in errors) + "</ul>")
    out.append("<h3>Expectations (Great Expectations suite on the manifest)</h3><table><tr><th>#</th>"
               "<th>expectation</th><th>arguments</th><th>result</th><th>unexpected rows</th>"
               "<th>reason code</th></tr>")
    for i, e in enumerate(expectations, start=1):
        ok = "passed" if e["success"] else "failed"
        args = ", ".join(f"{k}='{v}'" if isinstance(v, str) else f"{k}={v!r}" for k, v in e["kwargs"].items())
        out.append(f'<tr><td>{i}</td><td><code>{_cell(e["expectation"])}</code></td><td>{_cell(args)}</td>'
                   f'<td class="mmr-{"pass" if e["success"] else "fail"}">{ok}</td>'
                   f'<td>{e["unexpected_count"]}</td><td><code>{_cell(e["reason"])}</code></td></tr>')
    out.append("</table><h3>Media and row checks (mmretrieval, after the suite)</h3>")
    if not media_checked:
        out.append('<p class="mmr-none">Not run: the suite failed hard before the files were opened.</p>')
    out.append("<table><tr><th>modality</th><th>check</th><th>reason codes</th><th>rows quarantined</th></tr>")
    for modality, what, codes in MEDIA_CHECKS:
        kinds = modality.split("/")
        hits = sum(int(n) for (m, r), n in reasons.items() if r in codes and (modality == "all" or m in kinds))
        shown = "not run" if not media_checked else str(hits)
        out.append(f"<tr><td>{_cell(modality)}</td><td>{_cell(what)}</td><td>"
                   + ", ".join(f"<code>{_cell(c)}</code>" for c in codes)
                   + f'</td><td class="{"mmr-fail" if hits else "mmr-none"}">{shown}</td></tr>')
    out.append("</table></section>")
    return "".join(out)


def render(gx_page: str, summary: str) -> str:
    """One self-contained page: :func:`offline` GX page, the inline stylesheet, ``summary`` first in the body."""
    page = offline(gx_page)
    page = re.sub(r"</head>", f"<style>{STYLE}</style></head>", page, count=1, flags=re.I)
    page, n = re.subn(r"(<body\b[^>]*>)", lambda m: m.group(1) + summary, page, count=1, flags=re.I)
    if n == 0:
        page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{STYLE}</style></head><body>{summary}" \
               f"{page}</body></html>"
    return page
