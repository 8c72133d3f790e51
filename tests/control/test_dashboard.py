"""The dashboard in a real browser: Debian's headless chromium driven by selenium (chromedriver, no download).

Selenium's calls block, so each runs in a worker thread while the fleet (trio) keeps running in this one. Waits
are selenium's own condition waits (WebDriverWait), bounded by a few seconds: the page must follow the fleet
live, without a reload.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from galaxy_trio import DeviceStatus

from .rig import CONTROL_TOKEN, Rig, open_rig

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the 'test' extra)")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (bash .ci/browser.sh installs them)",
)

#: How long the page may take to show a change: "within a second or two", with room for a loaded CI machine.
LIVE = 4.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1500,900")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


async def _do(call: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(call, *args)


def _until(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float = LIVE) -> T:
    wait = WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(condition)


def _statuses(driver: WebDriver) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
    return {row.get_attribute("data-device") or "": row.get_attribute("data-status") or "" for row in rows}


def _open(driver: WebDriver, rig: Rig, token: str = CONTROL_TOKEN) -> None:
    driver.get_log("browser")  # drained: what a test reads is from its own page only
    driver.get(rig.url)
    field = _until(driver, lambda d: d.find_element(By.ID, "token-input"))
    _until(driver, lambda d: field.is_displayed())
    field.send_keys(token)
    driver.find_element(By.ID, "token-submit").click()


def _wait_statuses(driver: WebDriver, expected: dict[str, str], timeout: float = LIVE) -> dict[str, str]:
    return _until(driver, lambda d: (s := _statuses(d)) == expected and s, timeout)


def _row(driver: WebDriver, device_id: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#devices tbody tr[data-device="{device_id}"]')


IDS = ("web1", "web2", "web3")


async def test_every_device_has_its_row_and_a_killed_agent_shows_without_reload(
    browser: WebDriver, tmp_path: Path
) -> None:
    async with open_rig(IDS, dormant=("sleeper",)) as rig:
        await _do(_open, browser, rig)
        expected = {**dict.fromkeys(IDS, "idle"), "sleeper": "disconnected"}
        await _do(_wait_statuses, browser, expected)
        row = await _do(_row, browser, "web1")
        cells = {c.get_attribute("class"): c.text for c in await _do(row.find_elements, By.TAG_NAME, "td")}
        profile = rig.manager.get_device_info("web1")
        assert profile is not None
        assert cells["phase"] == "active" and cells["os"] == profile.os
        assert "configured" in cells["caps"] and cells["num queue"] == "0"
        counts = await _do(browser.find_element, By.ID, "counts")
        assert {"3 idle", "1 disconnected"} <= set(counts.text.split("\n"))
        assert await _do(lambda: browser.find_element(By.ID, "stream-state").text) == "live"
        # Heartbeat age ticks in the page.
        first = await _do(lambda: _row(browser, "web2").find_element(By.CLASS_NAME, "heartbeat").text)
        await _do(_until, browser, lambda d: _row(d, "web2").find_element(By.CLASS_NAME, "heartbeat").text != first)

        marker = await _do(browser.execute_script, "return window.performance.timeOrigin")
        rig.kill_agent("web2")
        await rig.wait_status("web2", DeviceStatus.FAILED)
        await _do(_wait_statuses, browser, {**expected, "web2": "failed"})
        reason = await _do(lambda: _row(browser, "web2").find_element(By.CLASS_NAME, "reason").text)
        profile = rig.manager.get_device_info("web2")
        assert profile is not None and profile.failure_reason and reason == profile.failure_reason
        feed = await _do(lambda: browser.find_element(By.ID, "events").text)
        assert "web2 status" in feed and "failed" in feed
        assert await _do(browser.execute_script, "return window.performance.timeOrigin") == marker  # no reload
        severe = [entry for entry in await _do(browser.get_log, "browser") if entry["level"] == "SEVERE"]
        assert severe == []  # no script error, no failed request
        await _do(browser.save_screenshot, str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000


async def test_the_connect_button_brings_a_failed_device_back(browser: WebDriver) -> None:
    async with open_rig(IDS) as rig:
        rig.kill_agent("web3")
        await rig.wait_status("web3", DeviceStatus.FAILED)
        await rig.start_agent("web3")
        await _do(_open, browser, rig)
        await _do(_wait_statuses, browser, {**dict.fromkeys(IDS, "idle"), "web3": "failed"})
        await _do(lambda: _row(browser, "web3").find_element(By.CSS_SELECTOR, "button.connect").click())
        await _do(_wait_statuses, browser, dict.fromkeys(IDS, "idle"))
        profile = rig.manager.get_device_info("web3")
        assert profile is not None and profile.status is DeviceStatus.IDLE


async def test_a_task_run_from_the_form_shows_its_result(browser: WebDriver) -> None:
    async with open_rig(IDS) as rig:
        await _do(_open, browser, rig)
        await _do(_wait_statuses, browser, dict.fromkeys(IDS, "idle"))

        def run_task() -> str:
            browser.find_element(By.CSS_SELECTOR, '#task-device option[value="web2"]').click()
            request = browser.find_element(By.ID, "task-request")
            request.clear()
            request.send_keys('{"tool_name": "echo", "parameters": {"text": "from the browser"}}')
            browser.find_element(By.ID, "task-run").click()
            result = browser.find_element(By.ID, "task-result")
            _until(browser, lambda d: result.get_attribute("class") in ("completed", "failed"))
            return result.text

        text = await _do(run_task)
        assert ": completed" in text and '"result": "from the browser"' in text

        def run_unknown() -> str:
            request = browser.find_element(By.ID, "task-request")
            request.clear()
            request.send_keys("no_such_tool")
            browser.find_element(By.ID, "task-run").click()
            result = browser.find_element(By.ID, "task-result")
            _until(browser, lambda d: "no_such_tool" in result.text and result.get_attribute("class") == "failed")
            return result.text

        assert "failed (task_failed)" in await _do(run_unknown)


async def test_a_wrong_token_shows_a_clear_message_and_no_data(browser: WebDriver) -> None:
    async with open_rig(IDS) as rig:
        await _do(_open, browser, rig, "not-the-token")
        error = await _do(_until, browser, lambda d: (e := d.find_element(By.ID, "token-error")).is_displayed() and e)
        assert "refused this token (401)" in error.text
        assert await _do(_statuses, browser) == {}
        stored = await _do(browser.execute_script, "return sessionStorage.getItem('galaxy_trio.control.token')")
        assert stored is None
        # The right one then opens it; the token never appears in the URL.
        field = await _do(browser.find_element, By.ID, "token-input")
        await _do(field.clear)
        await _do(field.send_keys, CONTROL_TOKEN)
        await _do(lambda: browser.find_element(By.ID, "token-submit").click())
        await _do(_wait_statuses, browser, dict.fromkeys(IDS, "idle"))
        assert CONTROL_TOKEN not in await _do(lambda: browser.current_url)


async def test_the_event_stream_reconnects_by_itself_after_a_restart(browser: WebDriver) -> None:
    async with open_rig(IDS) as rig:
        await _do(_open, browser, rig)
        await _do(_wait_statuses, browser, dict.fromkeys(IDS, "idle"))
        await rig.stop_control()
        await _do(_until, browser, lambda d: "retrying" in d.find_element(By.ID, "stream-state").text)
        await rig.start_control()
        await _do(_until, browser, lambda d: d.find_element(By.ID, "stream-state").text == "live", 10.0)
        rig.kill_agent("web1")  # a change after the restart still reaches the page
        await _do(_wait_statuses, browser, {**dict.fromkeys(IDS, "idle"), "web1": "failed"})
