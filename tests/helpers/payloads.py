"""HTML/script injection payloads: each one, if it ran in a page, sets ``window.__pwned`` or ``document.title`` to
``pwned`` (or navigates/loads), so that a browser test can tell whether any of them ran."""

from __future__ import annotations

RUN = "window.__pwned=1;document.title='pwned'"

PAYLOADS: tuple[str, ...] = (
    f"<script>{RUN}</script>",
    f"<svg onload=\"{RUN}\">",
    f"<svg><script>{RUN}</script></svg>",
    f"<details open ontoggle=\"{RUN}\">x</details>",
    f"<img src=x onerror=\"{RUN}\">",
    f"<IMG SRC=x OnErRoR=\"{RUN}\">",  # mixed case
    f"<a href=\"javascript:{RUN}\">click</a>",
    f"<a href=\"JaVaScRiPt&colon;{RUN}\">click</a>",  # entity-encoded scheme
    f"<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;{RUN}\">click</a>",
    f"<iframe srcdoc=\"<script>parent.{RUN}</script>\"></iframe>",
    f"<math><mtext><table><mglyph><style><img src=x onerror=\"{RUN}\">",  # the mXSS namespace confusion
    f"<body onload=\"{RUN}\">",
    f"<input autofocus onfocus=\"{RUN}\">",
    f"<div style=\"background:url(javascript:{RUN})\">s</div>",
    f"<object data=\"javascript:{RUN}\"></object>",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:window.__pwned=1\">",
    "<base href=\"javascript:/\">",
    f"<form><button formaction=\"javascript:{RUN}\">go</button></form>",
    f"&lt;img src=x onerror=\"{RUN}\"&gt;",  # already escaped: must stay text
    f"<noscript><p title=\"</noscript><img src=x onerror={RUN}>\">",
    f"<select><template><style><img src=x onerror=\"{RUN}\"></style></template></select>",
)



def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every start tag of ``html`` with its attributes, as a browser's tokenizer would see them (lower-cased)."""
    from html.parser import HTMLParser

    found: list[tuple[str, dict[str, str | None]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, dict(attrs)))

    Collect().feed(html)
    return found
