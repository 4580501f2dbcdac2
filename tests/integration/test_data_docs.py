"""The validation's data docs page (real GX, DVC, media checks): offline, with the dataset, its data version, every
expectation and the media checks, for passing and failing validations; in a real headless browser it loads nothing
from the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmretrieval.core.errors import ValidationFailed
from mmretrieval.stages import validate
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import good_rows, write_manifest
from tests.helpers.pages import assets

pytestmark = pytest.mark.integration


def bad_dataset(workspace: Path) -> Path:
    src = workspace.parent / "src"
    rows = good_rows(src)
    (src / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows += [{"id": "gone", "modality": "image", "path": "images/missing.png", "text": "x"},
             {"id": "corrupt", "modality": "image", "path": "images/corrupt.jpg", "text": "x"},
             {"id": "weird", "modality": "smell", "path": "images/ok0.png", "text": "x"}]
    return write_manifest(src, rows)


def test_a_passing_validation_page_is_offline_and_names_dataset_version_expectations_and_media_checks(
        workspace: Path) -> None:
    ingest(bad_dataset(workspace), "bad")
    result = validate.run("bad")
    page = Path(result["data_docs"]).read_text(encoding="utf-8")
    report = json.loads((workspace / "data/validated/bad/report.json").read_text())

    found = assets(page)
    assert found.loads == [], f"the page would load {found.loads}"
    assert all(h.startswith(("#", "http")) for h in found.links), found.links  # no dead relative links (Home)
    assert "url(" not in page and "cdn" not in page.lower()
    assert "Validation of dataset <code>bad</code>" in page
    assert f"Data version (DVC): <code>{report['data_version']}</code>" in page and report["status"] == "passed"
    assert "Data asset: None" not in page and "bad" in page.split("Data asset:")[1][:200]  # GX's own header
    for e in report["expectations"]:
        assert f"<code>{e['expectation']}</code>" in page
    assert len(report["expectations"]) >= 7
    # the media checks, with the rows they quarantined
    assert "<code>missing_file</code>" in page and "<code>undecodable</code>" in page
    decode_row = page.split("decodes within the pixel limit")[1].split("</tr>")[0]
    assert decode_row.endswith('class="mmr-fail">1</td>')  # corrupt.jpg
    audio_row = page.split("duration/channels/rate in bounds")[1].split("</tr>")[0]
    assert audio_row.endswith('class="mmr-none">0</td>')  # undecodable counts for the images only
    assert f"{report['valid']} of {report['rows']} rows usable" in page


def test_passing_and_failing_pages_render_in_a_headless_browser_without_the_network(
        workspace: Path, browser: object, tmp_path: Path) -> None:
    ingest(bad_dataset(workspace), "bad")
    passing = Path(validate.run("bad")["data_docs"])
    src = workspace.parent / "dups"
    ingest(write_manifest(src, good_rows(src, 2) + [{"id": "ok0", "modality": "image", "path": "images/ok1.png",
                                                    "text": "again"}]), "dups")
    with pytest.raises(ValidationFailed):
        validate.run("dups")
    failing = workspace / "data/validated/dups/data_docs.html"
    driver = browser
    for name, page, verdict in (("bad", passing, "passed"), ("dups", failing, "failed")):
        driver.get(page.resolve().as_uri())  # type: ignore[attr-defined]
        fetched = driver.execute_script(  # type: ignore[attr-defined]
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert fetched == [], f"{name}: the page fetched {fetched}"
        summary = driver.find_element("css selector", "#mmr-summary").text  # type: ignore[attr-defined]
        assert f"Validation of dataset {name}" in summary and f"Verdict: {verdict}" in summary
        color = driver.execute_script(  # type: ignore[attr-defined]
            "return getComputedStyle(document.querySelector('th')).backgroundColor")
        assert color == "rgb(241, 243, 245)"  # the inlined stylesheet applies
        shot = tmp_path / f"data_docs_{name}.png"
        driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")


def test_payloads_in_bad_modality_and_split_values_run_nothing_in_a_headless_browser(
        workspace: Path, browser: object, tmp_path: Path) -> None:
    """Each payload of tests/helpers/payloads.py as a manifest's ``modality`` and as its ``split``: GX writes these
    unexpected values into its page; opened in Chromium (as written, and once more without the page's CSP, so that
    the sanitiser alone is tested), none runs and the values are still shown as text."""
    from mmretrieval.backends.data_docs import PAGE_POLICY
    from tests.helpers.payloads import PAYLOADS

    src = workspace.parent / "xss"
    rows = good_rows(src, 2)
    rows += [{"id": f"m{i}", "modality": p, "path": "images/ok0.png", "text": "x"} for i, p in enumerate(PAYLOADS)]
    rows += [{"id": f"s{i}", "modality": "image", "path": "images/ok1.png", "text": "x", "split": p}
             for i, p in enumerate(PAYLOADS)]
    ingest(write_manifest(src, rows), "xss")
    try:
        validate.run("xss")
    except ValidationFailed:
        pass  # a failing validation writes the page too
    written = workspace / "data/validated/xss/data_docs.html"
    page = written.read_text(encoding="utf-8")
    assert "unknown_modality" in page and "<details" not in page.lower() and "<svg" not in page.lower()
    bare = tmp_path / "no_csp.html"
    bare.write_text(page.replace(f'<meta http-equiv="Content-Security-Policy" content="{PAGE_POLICY}">', ""),
                    encoding="utf-8")
    assert "Content-Security-Policy" not in bare.read_text(encoding="utf-8")
    driver = browser
    for opened in (written, bare):
        driver.get(opened.resolve().as_uri())  # type: ignore[attr-defined]
        import time

        time.sleep(1.0)  # handlers such as ontoggle/onfocus/onerror fire after load
        for link in driver.find_elements("css selector", "a"):  # type: ignore[attr-defined]
            href = link.get_attribute("href") or ""
            assert not href.lower().startswith("javascript:"), href
        state = driver.execute_script(  # type: ignore[attr-defined]
            "return [window.__pwned === undefined, document.title, location.href]")
        assert state == [True, "Validation report", opened.resolve().as_uri()], (opened.name, state)
        text = driver.find_element("css selector", "body").text  # type: ignore[attr-defined]
        assert "onload" in text or "onerror" in text  # the bad values are shown (as text), not lost
