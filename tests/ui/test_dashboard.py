"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium
with the driver's path set: nothing is downloaded), against `make run`'s demo fleet.

DASHBOARD_SCREENSHOTS=docs also writes the README's screenshots (fleet page, camera page in debug view).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleet import Fleet
from tests.test_make_run import CTL, ROOT, fleet_processes, port_busy

pytestmark = [pytest.mark.ui, pytest.mark.slow]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
URL = "http://127.0.0.1:8001/ui/"
SHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")


@pytest.fixture(scope="module")
def demo_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if port_busy(8001) or port_busy(8554) or fleet_processes():
        pytest.fail("a fleet is already running here (make stop first): this test starts its own with make run")
    try:
        subprocess.run(["make", "run"], cwd=ROOT, check=True, capture_output=True, timeout=600)
        Fleet.wait_for(lambda: port_busy(8001), 30, "the gateway")
        yield
    finally:
        subprocess.run(["make", "stop"], cwd=ROOT, check=False, capture_output=True, timeout=120)
        shutil.rmtree(ROOT / "run" / "specs", ignore_errors=True)


@pytest.fixture(scope="module")
def browser(demo_fleet: None) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are missing: make bootstrap installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


wait = Fleet.wait_for  # one waiting loop for the fleet tests


def tiles(driver: Any) -> dict[str, dict[str, str]]:
    return {t["camera"]: t for t in driver.execute_script(
        "return [...document.querySelectorAll('.tile')].map(t => ({...t.dataset}))")}


def canvas_hash(driver: Any, selector: str) -> str:
    data = driver.execute_script(f"return document.querySelector({selector!r}).toDataURL('image/png')")
    return hashlib.sha256(data.encode()).hexdigest()


def supervisor_state(program: str) -> str:
    out = subprocess.run([*CTL, "status", program], capture_output=True, text=True, timeout=10).stdout
    return out.split()[1] if len(out.split()) > 1 else ""


def open_page(driver: Any, hash_: str = "") -> None:
    driver.get(URL + hash_)
    wait(lambda: driver.execute_script("return document.body.dataset.live") == "1", 10, "the live connection")


def test_fleet_page_live_images_boxes_and_states(browser: Any) -> None:
    open_page(browser)
    wait(lambda: set(tiles(browser)) >= {"cam-001", "cam-002"}, 30, "both demo cameras' tiles")
    wait(lambda: all(int(t.get("frames", 0)) >= 2 for t in tiles(browser).values()), 60, "frames in both tiles")
    before = tiles(browser)
    hashes = {c: canvas_hash(browser, f'.tile[data-camera="{c}"] canvas') for c in before}
    time.sleep(4.0)
    after = tiles(browser)
    for camera in ("cam-001", "cam-002"):
        rate = (int(after[camera]["frames"]) - int(before[camera]["frames"])) / 4.0
        assert rate >= 2.0, f"{camera}: {rate:.1f} frames/s"
        assert after[camera]["captured"] != before[camera]["captured"]
        assert canvas_hash(browser, f'.tile[data-camera="{camera}"] canvas') != hashes[camera], "the image changes"
        assert after[camera]["state"] == "ONLINE" and after[camera]["process"] == "RUNNING"
    # a vehicle gets its box (drawn from the frame's tracks) within 30 s
    boxed = wait(lambda: [c for c, t in tiles(browser).items() if int(t.get("boxes", 0)) > 0], 30, "a box on a vehicle")
    if SHOTS:
        browser.save_screenshot(str(ROOT / SHOTS / "dashboard-fleet.png"))
    assert boxed
    header = browser.find_element("id", "h-counts").text
    assert "cameras 2" in header and "online 2" in header and "failing 0" in header, header
    assert "gateway CPU" in browser.find_element("id", "h-gateway").text


def test_camera_page_debug_view_detections_and_its_own_log(browser: Any) -> None:
    open_page(browser, "#/camera/cam-001")
    browser.find_element("id", "debug").click()
    wait(lambda: browser.execute_script("return document.getElementById('log').dataset.camera") == "cam-001", 10,
         "the log tail")
    lines = wait(lambda: [x for x in browser.find_element("id", "log").text.splitlines() if x.strip()], 10, "log lines")
    assert len(lines) <= 200
    tagged = [x for x in lines if "camera=" in x]
    assert tagged and all("camera=cam-001" in x for x in tagged), "only this camera's lines"
    assert not any("cam-002" in x for x in lines)
    wait(lambda: int(browser.execute_script("return document.getElementById('cam-canvas').dataset.boxes || 0")) > 0,
         30, "a tracked vehicle in the large view")
    wait(lambda: browser.execute_script("return document.querySelectorAll('#detections img').length") > 0, 60,
         "a detection with its crop")
    if SHOTS:
        browser.save_screenshot(str(ROOT / SHOTS / "dashboard-camera.png"))


def test_stop_and_start_buttons_act_through_supervisord(browser: Any) -> None:
    open_page(browser, "#/camera/cam-001")
    wait(lambda: browser.execute_script("return document.getElementById('camera').dataset.state") == "ONLINE", 30,
         "cam-001 online")
    pressed = time.monotonic()
    browser.find_element("id", "btn-stop").click()
    wait(lambda: supervisor_state("camera-cam-001") == "STOPPED", 3, "supervisorctl: camera-cam-001 STOPPED")
    browser.execute_script("location.hash = '#/'")
    left = max(0.1, 3 - (time.monotonic() - pressed))
    wait(lambda: tiles(browser).get("cam-001", {}).get("state") == "STOPPED", left,
         "the tile to say STOPPED within 3 s of the press")
    assert tiles(browser)["cam-002"]["state"] == "ONLINE"
    time.sleep(6)  # past the gateway's reconcile: an operator stop stays stopped
    assert supervisor_state("camera-cam-001") == "STOPPED"
    browser.execute_script("location.hash = '#/camera/cam-001'")
    browser.find_element("id", "btn-start").click()
    wait(lambda: supervisor_state("camera-cam-001") == "RUNNING", 30, "supervisorctl: camera-cam-001 RUNNING")
    browser.execute_script("location.hash = '#/'")
    wait(lambda: tiles(browser).get("cam-001", {}).get("state") == "ONLINE", 40, "the tile back ONLINE")


def test_the_page_recovers_when_the_gateway_restarts(browser: Any) -> None:
    open_page(browser)
    subprocess.run([*CTL, "restart", "gateway"], check=True, capture_output=True, timeout=60)
    wait(lambda: browser.execute_script("return document.body.dataset.live") == "1", 20, "the page to reconnect")
    frames = int(tiles(browser)["cam-002"].get("frames", 0))
    wait(lambda: int(tiles(browser)["cam-002"].get("frames", 0)) > frames + 2, 20, "frames again")
