"""The review page of `zstag report` in a real browser: headless Chromium driven by selenium.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (the [test] extra);
where any is missing every test here is skipped with that reason. The browser runs with a fresh
profile and no background networking, and its performance log shows every request the page made.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_report import HOSTILE, HOSTILE_IMG, make_set, page_data, zstag

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - depends on the machine
    webdriver = None

_MISSING = (
    "selenium is not installed (pip install -e '.[test]')"
    if webdriver is None
    else "Chromium is not installed (apt-get install chromium chromium-driver)"
    if CHROMIUM is None
    else "chromedriver is not installed (apt-get install chromium-driver)"
    if CHROMEDRIVER is None
    else None
)
pytestmark = pytest.mark.skipif(
    _MISSING is not None or shutil.which("zstag") is None,
    reason=_MISSING or "the zstag console script is not installed",
)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="zstag-chromium-")
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Any]:
    """A report with truth and unseen labels over 12 small images, two of them labelled hostilely."""
    built = make_set(tmp_path_factory.mktemp("browser"))
    result = zstag(
        "report", "p.jsonl", "--truth", "truth.jsonl", "--unseen", "unseen.txt", "-o", "r.html", cwd=built["folder"]
    )
    assert result.returncode == 0, result.stderr
    return {**built, "page": built["folder"] / "r.html", "data": page_data(built["folder"] / "r.html")}


def open_page(driver, page: Path) -> None:
    driver.get_log("performance")  # drop what earlier tests logged
    driver.get(page.as_uri())
    driver.execute_script("window.alert = () => { window.__alerted = true; };")


def cards(driver) -> list[str]:
    """The file names of the cards on screen, in order."""
    return [c.get_attribute("title") for c in driver.find_elements(By.CSS_SELECTOR, "#grid .card figcaption")]


def set_slider(driver, value: float) -> None:
    driver.execute_script(
        "const s = document.getElementById('threshold'); s.value = arguments[0];s.dispatchEvent(new Event('input'));",
        value,
    )


def test_grid_shows_every_image(browser, report):
    open_page(browser, report["page"])
    assert cards(browser) == [r["image"] for r in report["rows"]]
    loaded = browser.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded == 12
    assert browser.find_element(By.ID, "status").text.startswith("12 of 12 images")


def test_filtering_by_a_label_shows_exactly_the_images_carrying_it_best_first(browser, report):
    open_page(browser, report["page"])
    label = "red car"
    browser.find_element(By.ID, "query").send_keys(label)
    carrying = sorted(
        ((t["score"], i) for i, r in enumerate(report["rows"]) for t in r["tags"] if t["label"] == label),
        key=lambda pair: (-pair[0], pair[1]),
    )
    assert carrying, "the fixture should use the label"
    assert cards(browser) == [report["rows"][i]["image"] for _, i in carrying]


def test_clicking_a_tag_filters_by_it(browser, report):
    open_page(browser, report["page"])
    browser.find_element(By.CSS_SELECTOR, "#grid .tag[data-label='dog']").click()
    assert browser.find_element(By.ID, "query").get_attribute("value") == "dog"
    expected = {r["image"] for r in report["rows"] if any(t["label"] == "dog" for t in r["tags"])}
    assert set(cards(browser)) == expected


def test_threshold_slider_hides_low_scores(browser, report):
    open_page(browser, report["page"])
    set_slider(browser, 0.6)
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#grid .tag:not(.miss) .score')].map(s => Number(s.textContent))"
    )
    assert shown and min(shown) >= 0.6
    threshold = float(browser.find_element(By.ID, "threshold").get_attribute("value"))
    expected = [r["image"] for r in report["rows"] if any(t["score"] >= threshold for t in r["tags"])]
    assert cards(browser) == expected and len(expected) < 12


def test_truth_marks_correct_wrong_and_missed_tags(browser, report):
    open_page(browser, report["page"])
    first = browser.find_elements(By.CSS_SELECTOR, "#grid .card")[0]
    marks = {
        b.get_attribute("data-label"): b.get_attribute("class").split()[1]
        for b in first.find_elements(By.CSS_SELECTOR, ".tag")
    }
    predicted = {t["label"] for t in report["rows"][0]["tags"]}
    truth = set(report["truth_rows"][0]["tags"])
    assert marks == {**{l: "ok" if l in truth else "bad" for l in predicted}, **{l: "miss" for l in truth - predicted}}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ap tbody tr")) == len(report["data"]["labels"])
    assert browser.find_elements(By.CSS_SELECTOR, "#curves polyline.pr-gzs")
    assert browser.find_elements(By.CSS_SELECTOR, "#curves polyline.pr-zs")


def test_hostile_labels_render_as_text_and_run_nothing(browser, report):
    open_page(browser, report["page"])
    browser.find_element(By.ID, "query").send_keys(HOSTILE)
    texts = [b.text for b in browser.find_elements(By.CSS_SELECTOR, f"#grid .tag[data-label='{HOSTILE}']")]
    assert texts and all(t.startswith(HOSTILE) for t in texts)
    browser.find_element(By.ID, "query").clear()
    browser.execute_script("document.getElementById('query').dispatchEvent(new Event('input'))")
    assert browser.execute_script("return document.querySelectorAll('#grid img').length") == 12  # no injected <img>
    assert browser.execute_script("return [window.__alerted, window.__pwned]") == [None, None]
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_screenshot_is_not_blank(browser, report):
    open_page(browser, report["page"])
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    pixels = np.asarray(shot).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 100
    assert (pixels.min(axis=1) < 100).mean() > 0.01  # text and pictures, not one flat colour


def test_the_page_makes_no_network_request(browser, report):
    open_page(browser, report["page"])
    browser.find_element(By.ID, "query").send_keys(HOSTILE_IMG)  # would fetch if it were ever markup
    browser.find_element(By.ID, "evaluation").click()
    time.sleep(0.3)
    urls = [
        json.loads(e["message"])["message"]["params"]["request"]["url"]
        for e in browser.get_log("performance")
        if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"
    ]
    assert any(u.startswith("file:") for u in urls), "the performance log recorded nothing: the check would be void"
    assert [u for u in urls if not u.startswith(("file:", "data:"))] == []
    csp = browser.find_element(By.CSS_SELECTOR, "meta[http-equiv='Content-Security-Policy']").get_attribute("content")
    assert csp.startswith("default-src 'none'")


def test_100000_predictions_keep_one_page_of_cards_and_filter_fast(browser, tmp_path):
    rng = np.random.default_rng(0)
    labels = [f"label {i}" for i in range(200)]
    carrying = 0
    with open(tmp_path / "p.jsonl", "w") as fh:
        for i in range(100_000):
            picks = rng.choice(200, 4, replace=False)
            carrying += 7 in picks
            fh.write(
                json.dumps(
                    {
                        "image": f"x/{i}.jpg",
                        "tags": [{"label": labels[j], "score": 0.9 - 0.2 * k} for k, j in enumerate(picks)],
                    }
                )
                + "\n"
            )
    assert zstag("report", "p.jsonl", "--no-thumbnails", "-o", "big.html", cwd=tmp_path).returncode == 0
    start = time.perf_counter()
    open_page(browser, tmp_path / "big.html")
    assert browser.find_element(By.ID, "status").text.startswith("100000 of 100000 images")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card")) == 60
    loaded = time.perf_counter() - start
    took = browser.execute_script("""
        const q = document.getElementById('query'), t0 = performance.now();
        q.value = 'label 7'; q.dispatchEvent(new Event('input'));
        return performance.now() - t0;""")
    assert browser.find_element(By.ID, "status").text.startswith(f"{carrying} of 100000 images")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card")) == 60
    assert took < 1000 and loaded < 15, (took, loaded)
