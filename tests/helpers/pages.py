"""HTML pages the project writes, read back: what a page would load from elsewhere and where it links."""

from __future__ import annotations

from html.parser import HTMLParser


class Assets(HTMLParser):
    """Every address the page would load (stylesheets, scripts, images, frames) and every link."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("link", "script", "img", "iframe", "source", "embed") and (a.get("href") or a.get("src")):
            self.loads.append(str(a.get("href") or a.get("src")))
        if tag == "script":
            self.loads.append("<script>")
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))


def assets(page: str) -> Assets:
    """The :class:`Assets` of ``page`` (HTML text)."""
    parser = Assets()
    parser.feed(page)
    return parser
