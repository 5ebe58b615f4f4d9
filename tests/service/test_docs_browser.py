"""/docs in a real browser with the network blocked: Debian's chromium (headless, chromium-driver, Selenium)
against a real `python -m service` finds the operations listed, and every request it made went to the
service itself. Skips without chromium / chromedriver / selenium unless MODERATION_BROWSER_TESTS=require."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.service.serving import running_server

REQUIRE = os.environ.get("MODERATION_BROWSER_TESTS") == "require"
# Every host name fails to resolve except the service's own address: no request can leave the machine.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900", OFFLINE]


def _binaries() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser = None
    if not browser or not driver:
        why = "Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium"
        if REQUIRE:
            pytest.fail(f"MODERATION_BROWSER_TESTS=require but this needs {why}")
        pytest.skip(f"needs {why}")
    return browser, driver


@pytest.fixture
def browser():
    chromium, chromedriver = _binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="docs-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def test_docs_render_offline_with_every_operation(browser):
    from selenium.webdriver.common.by import By

    with running_server({}) as srv:  # the embedded default, no settings
        browser.get(srv.url + "/docs")
        selector = ".opblock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(browser.find_elements(By.CSS_SELECTOR, selector)) < 8:
            time.sleep(0.2)
        text = browser.find_element(By.TAG_NAME, "body").text
        assert len(browser.find_elements(By.CSS_SELECTOR, selector)) >= 8, text[:2000]
        for path in ("/classify", "/classify/batch", "/v1/moderations", "/domains", "/admin/reload"):
            assert path in text, path
        urls = _requested_urls(browser)
    web = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")]  # not the browser's chrome://
    assert any(u.endswith(".js") for u in web) and all(urlsplit(u).netloc == urlsplit(srv.url).netloc for u in web), web
