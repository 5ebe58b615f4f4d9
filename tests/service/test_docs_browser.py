"""/docs in a real browser with the network blocked: Debian's chromium (headless, chromium-driver, Selenium)
against a real `python -m service` finds the operations listed, and every request it made went to the
service itself. Skips without chromium / chromedriver / selenium unless MODERATION_BROWSER_TESTS=require."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import pytest

from tests.browser import chromium
from tests.service.serving import running_server

# Every host name fails to resolve except the service's own address: no request can leave the machine.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


@pytest.fixture
def browser():
    with chromium((OFFLINE,), {"goog:loggingPrefs": {"performance": "ALL"}}) as driver:
        yield driver


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
