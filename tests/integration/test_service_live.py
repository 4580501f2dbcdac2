"""The service as a real uvicorn server on loopback: schemathesis (its CLI, all checks) over HTTP, /health/live while
uploads are in flight, the search page in a real headless Chromium, and the server's whole log checked for secrets.

The browser (the ``browser`` fixture of tests/integration/conftest.py) is Debian's ``chromium`` with
``chromium-driver`` (``make test`` installs them); Selenium is pointed at ``/usr/bin/chromedriver`` so that nothing
is downloaded. Without them the browser test skips, unless ``MMR_REQUIRE_BROWSER=1`` (``make test`` sets it): then it
fails.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mmretrieval.cli import QUIET_LOGGERS
from mmretrieval.core.settings import Settings
from mmretrieval.serving.http import ServiceConfig, create_app
from tests.helpers.servers import free_port
from tests.helpers.workspace import BIN, REPO

pytestmark = pytest.mark.integration
KEY = "live-key-0123456789abcdef"
SCREENSHOT = REPO / "build" / "test-artifacts" / "search-page.png"  # docs/search-page.png: the same page on the demo
SCHEMATHESIS_EXAMPLES = 100  # per operation: about 1,900 requests, 25-40 s on 2 cores


@dataclass
class Live:
    url: str
    settings: Settings
    log: io.StringIO


@pytest.fixture(scope="module")
def live(published_tiny: Settings) -> Iterator[Live]:
    """``mmr serve``'s application under uvicorn on 127.0.0.1 in a thread, every log record of the process kept."""
    import uvicorn

    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name, level in QUIET_LOGGERS.items():  # as `mmr serve` does (cli.main)
        logging.getLogger(name).setLevel(level)
    # uvicorn's own loggers as a fresh `mmr serve` process has them: an earlier in-process uvicorn or dictConfig of
    # the test session may have left them disabled, non-propagating or above INFO
    uvicorn_state = {}
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        uvicorn_state[name] = (logger.level, logger.propagate, logger.disabled, list(logger.handlers))
        logger.setLevel(logging.NOTSET)
        logger.propagate, logger.disabled, logger.handlers = True, False, []
    port = free_port()
    app = create_app("tiny", published_tiny, ServiceConfig(api_keys=(KEY,)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, log.getvalue()[-3000:]
        time.sleep(0.1)
    try:
        yield Live(f"http://127.0.0.1:{port}", published_tiny, log)
    finally:
        server.should_exit = True
        thread.join(30)
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, (level, propagate, disabled, handlers) in uvicorn_state.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.propagate, logger.disabled, logger.handlers = propagate, disabled, handlers


def png_bytes(side: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_schemathesis_cli_with_all_checks_finds_no_5xx_and_no_undocumented_status(live: Live,
                                                                                  tmp_path: Path) -> None:
    """Generated from the service's own OpenAPI (examples, coverage, fuzzing, stateful; positive and negative data).

    A schema cannot say which filter strings parse or which bytes decode as an image, so schema-valid requests may
    also get the documented 400/404/415 (``positive_data_acceptance`` is told so); every other check is default.
    """
    config = tmp_path / "schemathesis.toml"
    config.write_text('[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "400", "404", "415"]\n')
    out = subprocess.run([str(BIN / "st"), "--config-file", str(config), "run", f"{live.url}/openapi.json",
                          "--checks", "all", "-H", f"X-API-Key: {KEY}", "--max-examples",
                          str(SCHEMATHESIS_EXAMPLES), "--seed", "15", "--no-color"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    summary = "\n".join(line for line in out.stdout.splitlines() if "generated" in line or "ST" in line)
    print(summary)
    assert out.returncode == 0, out.stdout[-6000:]
    metrics = httpx.get(f"{live.url}/metrics", headers={"X-API-Key": KEY}).text
    counts = [(line.split()[0], float(line.split()[1])) for line in metrics.splitlines()
              if line.startswith("mmr_http_requests_total")]
    assert sum(n for _, n in counts) > 1000
    assert not [name for name, _ in counts if 'status="5' in name and 'status="503"' not in name]


def test_health_answers_while_eight_clients_upload_images(live: Live) -> None:
    """Decoding and the model run in worker threads: /health/live is answered while uploads are in flight.

    Timing is measured in bench/service_load.py; here only a generous bound (2 s, against 2.2 s p50 before) keeps
    the test meaningful on a loaded machine.
    """
    images = [png_bytes(900, seed) for seed in range(8)]
    stop = threading.Event()
    done: list[int] = []

    def uploader(i: int) -> None:
        with httpx.Client(base_url=live.url, headers={"X-API-Key": KEY}, timeout=120) as c:
            while not stop.is_set():
                r = c.post("/search/upload", files={"file": (f"{i}.png", images[i], "image/png")}, data={"k": "3"})
                assert r.status_code == 200, r.text
                done.append(i)

    latencies: list[float] = []
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(uploader, i) for i in range(8)]
        with httpx.Client(base_url=live.url, timeout=30) as c:
            while len(done) < 8:  # wait until the uploads run
                time.sleep(0.05)
            in_flight_before = len(done)
            for _ in range(20):
                t = time.perf_counter()
                assert c.get("/health/live").status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.05)
            finished_during = len(done) - in_flight_before
        stop.set()
        for f in futures:
            f.result()
    print(f"/health/live under upload load: max {max(latencies) * 1000:.1f} ms; uploads meanwhile {finished_during}")
    assert finished_during >= 8  # the uploads really were running while health was asked
    assert max(latencies) < 2.0


def test_the_search_page_finds_by_text_and_by_uploaded_image_in_a_real_browser(live: Live, browser: object,
                                                                              tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 30)  # type: ignore[arg-type]
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (  # type: ignore[attr-defined]
        "window.__csp = []; document.addEventListener('securitypolicyviolation', "
        "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")})  # every CSP refusal, recorded
    page = httpx.get(f"{live.url}/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]  # the page runs under the policy
    driver.get(f"{live.url}/")  # type: ignore[attr-defined]
    driver.execute_script("sessionStorage.setItem('mmr-api-key', arguments[0])", KEY)  # type: ignore[attr-defined]
    driver.refresh()  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "serving"), "collection mmr_tiny__m1__"))

    box = driver.find_element(By.ID, "q")  # type: ignore[attr-defined]
    assert driver.switch_to.active_element == box  # type: ignore[attr-defined]  # keyboard first: focus in the box
    box.send_keys("a blue square", Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results"))
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")  # type: ignore[attr-defined]
    assert len(cards) == 12
    first = cards[0]
    assert first.find_element(By.CSS_SELECTOR, "dd.collection").text.startswith("mmr_tiny__m1__")
    assert first.find_element(By.CSS_SELECTOR, "dd.model").text == "v1"
    assert first.find_element(By.CSS_SELECTOR, "dd.label").text in ("red", "green", "blue", "yellow")
    wait.until(lambda d: d.execute_script(  # the thumbnails arrive (fetched by item id, with the API key)
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))

    query = live.settings.layout("tiny").clean / "media"
    image = next(p for p in sorted(query.rglob("*")) if p.is_file() and "green1" in p.name)
    upload = tmp_path / "query.png"
    shutil.copyfile(image, upload)
    box.clear()
    driver.find_element(By.ID, "file").send_keys(str(upload))  # type: ignore[attr-defined]  # submits
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "for query.png"))
    first = driver.find_element(By.CSS_SELECTOR, "#results .card")  # type: ignore[attr-defined]
    assert first.get_attribute("data-id") == "green1"
    assert first.find_element(By.CSS_SELECTOR, "dd.score").text.startswith(("1.0000", "0.99"))
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(tmp_path / "page.png"))  # type: ignore[attr-defined]
    shutil.copyfile(tmp_path / "page.png", SCREENSHOT)

    driver.set_window_size(390, 844)  # type: ignore[attr-defined]  # a phone: no horizontal scrolling
    assert driver.execute_script(  # type: ignore[attr-defined]
        "return document.documentElement.scrollWidth <= window.innerWidth")
    assert driver.execute_script("return window.__csp") == []  # type: ignore[attr-defined]  # nothing refused


def test_the_server_log_holds_no_secret_and_no_absolute_path(live: Live) -> None:
    """Runs last in this module: everything the process logged while the tests above ran."""
    httpx.post(f"{live.url}/search", json={"text": "cat"}, headers={"X-API-Key": "wrong-" + KEY})
    text = live.log.getvalue()
    assert "GET /health/live" in text  # the log was captured
    for needle in (KEY, str(live.settings.home), str(REPO)):
        assert needle not in text, needle
    ours = [line for line in text.splitlines() if line.split(" ", 2)[1:2] and line.split(" ", 2)[1].startswith(
        ("mmretrieval", "uvicorn"))]
    assert ours and not [line for line in ours if re.search(r"(?<![\w:/.])/(?:work|root|home|tmp|usr|opt)/", line)]
