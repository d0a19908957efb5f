"""The web page in headless Chromium: upload an X-ray, see the label, probabilities, heatmap and OOD warning."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from inference.conftest import xray_like

from .conftest import FakeOod, LiveServer

CHROMIUM = Path(os.environ.get("PNEUMO_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("PNEUMO_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOT_DIR = os.environ.get("PNEUMO_SCREENSHOT_DIR")  # set it to keep a screenshot of the page

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"headless Chromium not installed ({CHROMIUM}, {CHROMEDRIVER}); apt-get install chromium chromium-driver",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pneumo-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1200,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _upload_and_wait(driver, live: LiveServer, image: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(live.url + "/")
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: "Model " in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(str(image))
    wait.until(ec.visibility_of_element_located((By.ID, "label")))
    wait.until(lambda d: d.find_element(By.ID, "label").text.strip() != "")
    wait.until(ec.visibility_of_element_located((By.ID, "heatmap")))
    wait.until(lambda d: d.execute_script("return document.getElementById('heatmap').naturalWidth") > 0)


def test_upload_shows_label_probabilities_and_heatmap(browser, live: LiveServer, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    image = tmp_path / "chest.png"
    Image.fromarray(xray_like(300, 240, seed=11)).save(image)
    _upload_and_wait(browser, live, image)

    label = browser.find_element(By.ID, "label").text
    assert label in ("NORMAL", "PNEUMONIA")
    probs = browser.find_element(By.ID, "probs").text
    assert "NORMAL" in probs and "PNEUMONIA" in probs and "%" in probs
    assert browser.execute_script("return document.getElementById('heatmap').naturalWidth") == 240
    assert not browser.find_element(By.ID, "ood-warning").is_displayed()
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert "Research use only, not a medical device" in browser.find_element(By.ID, "disclaimer").text
    if SCREENSHOT_DIR:
        browser.save_screenshot(str(Path(SCREENSHOT_DIR) / "pneumo-page.png"))


def test_out_of_distribution_warning_banner(browser, live: LiveServer, tmp_path: Path, monkeypatch) -> None:
    from selenium.webdriver.common.by import By

    monkeypatch.setattr(FakeOod, "inside", False)
    image = tmp_path / "odd.png"
    Image.fromarray(xray_like(120, 120, seed=12)).save(image)
    _upload_and_wait(browser, live, image)
    banner = browser.find_element(By.ID, "ood-warning")
    assert banner.is_displayed() and "does not look like" in banner.text
    assert "unlike the chest X-rays" in browser.find_element(By.ID, "ood-reason").text
    # no confident label: the label is withheld and the probabilities sit folded away as unreliable
    assert browser.find_element(By.ID, "label").text == "Not assessed: out of distribution"
    assert browser.find_element(By.ID, "ood-probs").is_displayed()
    assert not browser.find_element(By.ID, "probs").text
    if SCREENSHOT_DIR:
        browser.save_screenshot(str(Path(SCREENSHOT_DIR) / "pneumo-page-ood.png"))


def test_bad_file_shows_the_error(browser, live: LiveServer, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    browser.get(live.url + "/")
    browser.find_element(By.ID, "file").send_keys(str(fake))
    error = WebDriverWait(browser, 30).until(ec.visibility_of_element_located((By.ID, "error")))
    assert "fake.png" in error.text and "not a supported image format" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
