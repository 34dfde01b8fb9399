"""The storefront page (GET /) end to end: headless Chromium, driven by Playwright, against a real local
Ray Serve app on the tiny trained models: pick a user, search, click an item, and see the click change
the recommendations."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayrec.release import ReleaseLayout

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# This machine's network is closed: no sandbox (root in a container), no GPU, no background fetches.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000
PAGE_IDS = ("user-id", "search-input", "search-button", "search-results", "recommended", "similar", "status")
MAX_CLICKS = 5
# The ranker's own order: the tiny shop's fitted trend boost (4) leaves the top 12 to the trending
# items whatever the user clicks, and this test is about the click reaching the ranking, not the boost.
SERVE_OVERRIDES = {"serve.trend_boost": 0.0}


def _top(item: dict) -> str:
    return (item["category"] or "").split(" > ")[0]


def _query_word(items: list[dict], top: str) -> str:
    """A title word common in category ``top`` and rare elsewhere: a search for it should find such items."""
    inside, outside = Counter(), Counter()
    for it in items:
        words = set(re.findall(r"[A-Za-z]{4,}", it["title"] or ""))
        (inside if _top(it) == top else outside).update(words)
    return max(inside, key=lambda w: (inside[w] - outside[w], inside[w], w))


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not present: the storefront browser test needs Chromium")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def test_storefront_page_is_served(served):
    base, _, _ = served
    with urllib.request.urlopen(f"{base}/", timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        html = r.read().decode()
    for element_id in PAGE_IDS:
        assert f'id="{element_id}"' in html
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN, no external URL


def test_search_click_and_recommendations_change(served, browser, tmp_path):
    from playwright.sync_api import expect

    base, _, release = served
    with urllib.request.urlopen(f"{base}/readyz", timeout=30) as r:
        assert json.load(r)["ranking"]["trend_boost"] == 0.0  # serve.trend_boost reached the ranking replica
    histories = pq.read_table(ReleaseLayout(release).histories).to_pylist()
    items = {it["item_id"]: it for it in pq.read_table(ReleaseLayout(release).items).to_pylist()}
    user = next(h["user_id"] for h in histories if h["item_id"])

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.goto(f"{base}/")
    expect(page.locator("#version")).to_contain_text(release.name)

    # A known user: the recommended row fills with their items.
    page.fill("#user-id", user)
    page.press("#user-id", "Enter")
    recommended = page.locator("#recommended .item-card")
    expect(page.locator(f'#recommended[data-user-id="{user}"][data-state="ready"]')).to_have_count(1)
    expect(recommended.first).to_be_visible()
    before = recommended.evaluate_all("cards => cards.map(c => c.dataset.itemId)")
    assert before and set(before) <= set(items)
    expect(page.locator("#recommended-meta")).to_contain_text("reranked")

    # Search for a word from the titles of a top category the user is not being shown.
    shown = Counter(_top(items[i]) for i in before)
    tops = Counter(_top(it) for it in items.values())
    target = min(tops, key=lambda t: (shown[t], -tops[t], t))
    query = _query_word(list(items.values()), target)
    page.fill("#search-input", query)
    page.click("#search-button")
    expect(page.locator('#search-results[data-state="ready"] .item-card').first).to_be_visible()
    expect(page.locator("#search-meta")).to_contain_text(query)
    found = page.locator("#search-results .item-card").evaluate_all("cards => cards.map(c => c.dataset.itemId)")
    assert found and set(found) <= set(items)
    clickable = [i for i in found if _top(items[i]) == target] + [i for i in found if _top(items[i]) != target]

    # Click results (from the target category first) until a click has changed the recommendations.
    after, clicked = before, None
    for clicked in clickable[:MAX_CLICKS]:
        loads = int(page.get_attribute("#recommended", "data-loads") or 0)
        page.click(f'#search-results .item-card[data-item-id="{clicked}"]')
        page.wait_for_function(
            """loads => { const box = document.querySelector("#recommended");
                          return Number(box.dataset.loads) > loads && box.dataset.state === "ready"; }""",
            arg=loads, timeout=TIMEOUT_MS)
        after = recommended.evaluate_all("cards => cards.map(c => c.dataset.itemId)")
        if after != before:
            break
    assert after != before, f"{MAX_CLICKS} clicks on {target!r} items did not change the recommendations"
    expect(page.locator("#status")).to_contain_text("Clicked")
    expect(page.locator("#status")).not_to_have_class("error")

    # Similar items for the clicked item.
    similar = page.locator(f'#similar[data-item-id="{clicked}"][data-state="ready"] .item-card')
    expect(similar.first).to_be_visible()
    neighbours = similar.evaluate_all("cards => cards.map(c => c.dataset.itemId)")
    assert neighbours and clicked not in neighbours and set(neighbours) <= set(items)

    # An overlong query is refused by the API; the page says why instead of failing silently.
    page.fill("#search-input", "x" * 2000)
    page.click("#search-button")
    expect(page.locator("#status.error")).to_contain_text("failed (4")
    page.fill("#search-input", query)
    page.click("#search-button")
    expect(page.locator('#search-results[data-state="ready"] .item-card').first).to_be_visible()
    expect(page.locator("#status")).not_to_have_class("error")  # a good answer clears the old error
    assert not page_errors, page_errors

    shot = tmp_path / "storefront.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    artifacts = os.environ.get("RAYREC_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "storefront.png")
