"""Fixtures shared by the integration tests: prepared and published tiny datasets, a headless browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.runner import run_stage
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import tiny_dataset
from tests.helpers.workspace import enter_workspace, make_workspace

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def prepared(workspace: Path) -> Path:
    """The tiny dataset ingested, validated, cleaned and augmented in a fresh workspace."""
    ingest(tiny_dataset(workspace.parent / "src"), "tiny")
    for verb in ("validate", "clean", "augment"):
        run_stage(verb, "tiny")
    return workspace


@pytest.fixture(scope="session")
def published_tiny(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny dataset taken through every stage up to publish, once per session (about 30 s on 2 CPU cores).

    Tests use the returned settings explicitly; MMR_HOME is set only while it is built.
    """
    from mmretrieval.runner import run_all

    root = make_workspace(tmp_path_factory.mktemp("published") / "ws")
    with pytest.MonkeyPatch.context() as mp:
        enter_workspace(mp, root)
        ingest(tiny_dataset(root.parent / "src"), "tiny")
        run_all("tiny")
        return get_settings(root)


def require_browser() -> None:
    """Skip without Debian's chromium and chromedriver and selenium (fail instead with MMR_REQUIRE_BROWSER=1)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if not missing:
        return
    reason = f"{', '.join(missing)} missing: run `make browser` (Debian packages chromium chromium-driver)"
    if os.environ.get("MMR_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MMR_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """A headless Chromium driven by Selenium through /usr/bin/chromedriver (nothing is downloaded); quit after."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
