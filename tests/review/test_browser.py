"""A reviewer at the page: Debian's chromium (headless, through chromium-driver and Selenium) against a real
`python -m service`; two items reviewed by keyboard, the verdicts checked in the store, an undo.

Skips without chromium / chromedriver unless MODERATION_BROWSER_TESTS=require (.ci/run sets it).
Set MODERATION_REVIEW_SCREENSHOT=PATH to keep a screenshot of the page (docs/review_page.png).
"""

from __future__ import annotations

import os
import time

import pytest

from review import ReviewStore
from tests.browser import chromium
from tests.service.serving import make_store, make_tiny_model, running_server, tiny_env

TOKEN = "browser-token"


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


def synthetic_jpeg(label: str, seed: int) -> bytes:
    """A fresh image of the synthetic world (training.synth), photo style, 320 px."""
    import io

    import numpy as np

    from training.synth import render

    buf = io.BytesIO()
    render("photo", label, np.random.default_rng(seed), size=320).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _wait(fn, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_keyboard_review_two_items_and_undo(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    model = make_tiny_model(tmp_path / "model")
    store_dir = tmp_path / "store"
    make_store(store_dir, model.clip)
    db = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    env = tiny_env(model, store_dir, MODERATION_REVIEW_DB=db, MODERATION_REVIEW_AUDIT_RATE="1",
                   MODERATION_REVIEWER_TOKEN=TOKEN)
    with running_server(env) as srv, srv.client() as c:
        sent = []
        for i, label in enumerate(["knife", "pistol", "syringe"]):
            r = c.post("/classify", files={"image": ("a.jpg", synthetic_jpeg(label, 5000 + i), "image/jpeg")},
                       data={"domain": "photo"})
            sent.append(r.json()["review_id"])
        store = ReviewStore(db)
        _wait(lambda: sum(store.pending_counts().values()) == 3, what="3 queued items")

        browser.get(srv.url + "/review")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "reviewer").send_keys("ana")
        browser.find_element(By.ID, "start").click()
        body = browser.find_element(By.TAG_NAME, "body")

        def on_screen():
            return browser.find_element(By.ID, "queue").get_attribute("data-item-id")

        def image_loaded():
            return browser.execute_script("const i = document.getElementById('image');"
                                          "return i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:');")

        first = _wait(on_screen, what="the first item")
        _wait(image_loaded, what="the image")
        assert first == sent[0]  # oldest first
        assert "3 left" in browser.find_element(By.ID, "left").text
        assert "photo" in browser.find_element(By.ID, "item-domain").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#top-labels tbody tr")) == 3
        # photo labels in bundle order: 1 weapon (unsafe), 2 flower, 3 cat
        body.send_keys("1")
        assert "weapon" in browser.find_element(By.CSS_SELECTOR, "#choices li.selected").text
        if os.environ.get("MODERATION_REVIEW_SCREENSHOT"):
            browser.save_screenshot(os.environ["MODERATION_REVIEW_SCREENSHOT"])
        body.send_keys(Keys.ENTER)
        second = _wait(lambda: (v := on_screen()) != first and v, what="the second item")
        assert second == sent[1]
        _wait(lambda: "2 left" in browser.find_element(By.ID, "left").text, what="2 left")
        body.send_keys("0")
        body.send_keys(Keys.ENTER)
        third = _wait(lambda: (v := on_screen()) not in (first, second) and v, what="the third item")
        assert third == sent[2]

        verdicts = {i["id"]: i["verdict"] for i in store.list("decided")}
        assert verdicts[first]["label"] == "weapon" and verdicts[first]["unsafe"] is True
        assert verdicts[second]["label"] is None and verdicts[second]["unsafe"] is False
        assert verdicts[first]["reviewer"] == verdicts[second]["reviewer"] == "ana"

        body.send_keys("z")  # undo the last verdict: the second item is back on screen, pending again
        _wait(lambda: on_screen() == second, what="the undone item")
        assert store.get(second)["verdict"] is None
        body.send_keys("3")
        body.send_keys(Keys.ENTER)
        _wait(lambda: on_screen() == third, what="the held item again")
        assert store.get(second)["verdict"]["label"] == "cat"

        browser.get(srv.url + "/review#stats")  # token kept in sessionStorage: no login again
        _wait(lambda: "photo" in browser.find_element(By.ID, "stats-body").text, what="the stats view")
        text = browser.find_element(By.ID, "stats-body").text
        assert "photo: per label" in text and "weapon" in text
        logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
        assert not [e for e in logs if "Content Security Policy" in e.get("message", "")], logs
        store.close()
