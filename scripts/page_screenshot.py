"""Screenshot of the search page of a running ``mmr serve`` (Debian's headless Chromium, nothing downloaded).

    .venv/bin/python scripts/page_screenshot.py http://127.0.0.1:8000 docs/search-page.png --query "a rocket"

``--key`` (or ``MMR_API_KEY``) when the service requires one; ``--width``/``--height`` the window.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--query", default="a rocket standing on a launchpad")
    ap.add_argument("--key", default=os.environ.get("MMR_API_KEY", ""))
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--window-size={args.width},{args.height}",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
        try:
            driver.get(args.url.rstrip("/") + "/")
            if args.key:
                driver.execute_script("sessionStorage.setItem('mmr-api-key', arguments[0])", args.key)
                driver.refresh()
            wait = WebDriverWait(driver, 60)
            wait.until(ec.text_to_be_present_in_element((By.ID, "serving"), "collection"))
            driver.find_element(By.ID, "q").send_keys(args.query, Keys.ENTER)
            wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "result"))
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
            driver.save_screenshot(args.out)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
