"""The data docs page's sanitiser (``backends/data_docs.sanitise``) on a corpus of injection payloads, no browser:
only allow-listed tags and attributes survive, links only ``#``/http(s)/mailto, the text of the payloads is kept."""

from __future__ import annotations

import html

import pytest

from mmretrieval.backends.data_docs import ATTRIBUTES, PAGE_POLICY, TAGS, render, sanitise
from tests.helpers.payloads import PAYLOADS, elements


def allowed(tag: str, attribute: str) -> bool:
    added = {"rel"} if tag == "a" else set()  # the sanitiser's own rel="noopener noreferrer"
    return attribute in ATTRIBUTES.get("*", set()) | ATTRIBUTES.get(tag, set()) | added


@pytest.mark.parametrize("payload", PAYLOADS)
def test_no_payload_keeps_a_tag_attribute_or_url_outside_the_allow_list(payload: str) -> None:
    # as GX writes an unexpected value: inside a table cell of its page
    out = sanitise(f"<table><tr><td>modality</td><td>{payload}</td></tr></table>")
    for tag, attrs in elements(out):
        assert tag in TAGS, (tag, out)
        for name, value in attrs.items():
            assert allowed(tag, name), (tag, name, out)
            if name == "href":
                assert value == "#" or str(value).startswith(("#", "http://", "https://", "mailto:")), out
    assert "pwned" not in html.unescape(" ".join(str(v) for _, a in elements(out) for v in a.values()))


def test_readable_content_survives_and_relative_links_point_inside_the_page() -> None:
    page = ('<html><head><script src="https://cdn.example/x.js"></script></head><body>'
            '<h2 class="h5">Overview</h2><table class="table"><tr><th>value</th></tr><tr><td><code>smell</code></td>'
            '</tr></table><a href="../index.html">Home</a><a href="https://greatexpectations.io">GX</a>'
            '<a href="#top">top</a><p style="color:red">text</p></body></html>')
    out = render(page, '<section id="mmr-summary">summary</section>')
    assert '<h2 class="h5">Overview</h2>' in out and "<code>smell</code>" in out and "<th>value</th>" in out
    assert '<a href="#" rel="noopener noreferrer">Home</a>' in out
    assert 'href="https://greatexpectations.io"' in out and 'href="#top"' in out
    assert "<p>text</p>" in out and "cdn.example" not in out
    assert out.index('id="mmr-summary"') < out.index("Overview")
    assert f'content="{PAGE_POLICY}"' in out and "script-src" not in PAGE_POLICY and "default-src 'none'" in out


def test_payload_text_is_kept_as_text_not_lost() -> None:
    out = sanitise("<td>bad &lt;svg onload=x&gt; value</td>")
    assert "bad &lt;svg onload=x&gt; value" in out
