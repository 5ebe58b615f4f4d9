"""Debian's chromium, headless, driven through chromium-driver and Selenium (no browser downloads).

Skips without chromium / chromedriver / selenium unless MODERATION_BROWSER_TESTS=require (.ci/run sets it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE = os.environ.get("MODERATION_BROWSER_TESTS") == "require"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


def binaries() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip (fail under MODERATION_BROWSER_TESTS=require)."""
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


@contextmanager
def chromium(extra_flags: tuple[str, ...] = (), capabilities: dict | None = None) -> Iterator:
    """A Selenium driver over a fresh profile; quit and the profile removed on exit."""
    browser, chromedriver = binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="test-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in [*FLAGS, *extra_flags, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    for k, v in (capabilities or {}).items():
        opts.set_capability(k, v)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)  # no Selenium Manager
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
