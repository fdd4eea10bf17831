"""The web console in a real headless Chromium (Debian's, driven by Playwright).

The engine, a real redis-server and the paper exchange run in this process (the
integration stack); the browser loads the console from the engine's own HTTP server.
Chromium must be installed (`apt-get install chromium`; `.ci/run` does it): without it
these tests fail, they are never skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright, expect

from rotation_fsm.core import reasons as R
from rotation_fsm.core.settings import load_settings
from rotation_fsm.runtime.controls import Controls
from rotation_fsm.web.http import make_app
from tests.integration.harness import Stack

pytestmark = pytest.mark.timeout(300)  # the first may install Chromium on a fresh machine
CHROMIUM = "/usr/bin/chromium"
TOKEN = "console-token-123"
SLOTS = {"GOV_ACTIVE_SLOTS_CHOP": "3", "GOV_HTTP_TOKEN": TOKEN, "GOV_ROTATION_LOCK_TTL": "120"}
# As root, in a sandbox with no network: no sandboxing, no background connections.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _install_chromium() -> None:
    """On a fresh Debian machine the test command sets up what it needs: Chromium from
    apt, as root (best effort; CI installs it beforehand)."""
    if Path(CHROMIUM).exists() or os.geteuid() != 0 or not Path("/usr/bin/apt-get").exists():
        return
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(command, check=False, capture_output=True, timeout=600)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    _install_chromium()
    assert Path(CHROMIUM).exists(), "Chromium is missing: apt-get install -y chromium"
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


async def screenshot(page: Page, name: str) -> None:
    """Saved by every run (git ignores the folder), for a human to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def open_console(browser: Browser, url: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    await expect(page.locator("#conn")).to_have_text("live")
    assert errors == []  # no CSP violation, no script error
    return page


async def test_a_rotation_appears_counts_down_confirms_and_shows_its_path(
    stack: Stack, browser: Browser
) -> None:
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")  # SOL the weakest
    running = await stack.start_engine(**SLOTS)
    base = f"http://127.0.0.1:{running.http_port}"
    page = await open_console(browser, base + "/")
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    row = page.locator(f'#inflight tr[data-rotation="{lock["rotation_id"]}"]')
    await expect(row).to_contain_text("SOLUSDT → NEWUSDT")
    await expect(row.locator(".state")).to_have_text("CLOSE_EMITTED")
    # The countdown runs: its text changes while we watch.
    first = await row.locator(".countdown").inner_text()
    assert first.endswith(" s") and 0 < float(first.split()[0]) <= 120
    await page.wait_for_function(
        "([sel, t]) => document.querySelector(sel).textContent !== t",
        arg=[f'#inflight tr[data-rotation="{lock["rotation_id"]}"] .countdown', first],
    )
    await expect(page.locator('.cell.closing[data-symbol="SOLUSDT"]')).to_be_visible()
    await screenshot(page, "console-rotation")  # docs/console.png is a copy of this one

    await stack.send_result(lock["close_plan_id"], symbol="SOLUSDT")
    done = page.locator(f'#finished tr[data-rotation="{lock["rotation_id"]}"]')
    await expect(done.locator(".state")).to_have_text("CONFIRMED")
    await expect(row).to_have_count(0)
    allowed = page.locator('#decisions tr[data-plan="a1b2c3d4e5f67890"][data-decision="ALLOW"]')
    await expect(allowed).to_contain_text(R.ROTATION_COMPLETE)
    rows = page.locator("#decisions tbody tr")
    await page.select_option("#f-reason", R.ROTATION_COMPLETE)  # the filters
    await expect(rows).to_have_count(1)
    await page.select_option("#f-reason", "")
    await page.fill("#f-symbol", "sol")
    await expect(rows).to_have_count(1)  # the close plan of SOLUSDT, exempt
    await expect(rows.first).to_contain_text(R.CLOSE_EXEMPT)

    await done.locator("a").click()
    await expect(page.locator("#detail-title")).to_have_text(f"rotation {lock['rotation_id']}")
    diagram = page.locator("#diagram svg")
    await expect(diagram.locator('g.current[data-state="CONFIRMED"]')).to_have_count(1)
    for state in ("IDLE", "LOCKED", "CLOSE_EMITTED"):
        await expect(diagram.locator(f'g.onpath[data-state="{state}"]')).to_have_count(1)
    await expect(page.locator("#story")).to_contain_text("SOLUSDT")


async def test_a_rotation_whose_close_never_comes_times_out_on_screen(
    stack: Stack, browser: Browser
) -> None:
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    running = await stack.start_engine(**{**SLOTS, "GOV_ROTATION_LOCK_TTL": "2"})
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    row = page.locator(f'#inflight tr[data-rotation="{lock["rotation_id"]}"]')
    await expect(row.locator(".countdown")).to_have_text(re.compile(r"^[0-2]\.\d s$"))
    # No result comes: the timer ends it at the deadline, and the page follows.
    done = page.locator(f'#finished tr[data-rotation="{lock["rotation_id"]}"] .state')
    await expect(done).to_have_text("TIMED_OUT", timeout=15_000)
    await expect(row).to_have_count(0)
    blocked = page.locator('#decisions tr[data-plan="a1b2c3d4e5f67890"][data-decision="BLOCK"]')
    await expect(blocked.first).to_contain_text(R.ROTATION_TIMEOUT)
    await screenshot(page, "console-timed-out")
    await page.goto(f"http://127.0.0.1:{running.http_port}/rotation/{lock['rotation_id']}")
    diagram = page.locator("#diagram svg")
    await expect(diagram.locator('g.current[data-state="TIMED_OUT"]')).to_have_count(1)


async def test_abort_is_offered_only_with_the_token(stack: Stack, browser: Browser) -> None:
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    running = await stack.start_engine(**SLOTS)
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    await stack.send_plan("a1b2c3d4e5f67890")
    lock = await stack.event(R.EV_LOCK_CREATED)
    row = page.locator(f'#inflight tr[data-rotation="{lock["rotation_id"]}"]')
    await expect(row).to_have_count(1)
    await expect(page.locator("button.abort")).to_have_count(0)  # read-only without it

    await page.fill("#token", TOKEN)
    await page.click("#token-set")
    await row.locator("button.abort").click()
    await expect(page.locator("#notice")).to_contain_text("ABORTED")
    done = page.locator(f'#finished tr[data-rotation="{lock["rotation_id"]}"] .state')
    await expect(done).to_have_text("ABORTED")
    blocked = page.locator('#decisions tr[data-plan="a1b2c3d4e5f67890"][data-decision="BLOCK"]')
    await expect(blocked.first).to_be_visible()
    assert TOKEN not in await page.content()  # typed once, never shown again


async def test_the_page_says_when_the_live_connection_drops_and_recovers(
    stack: Stack, browser: Browser
) -> None:
    running = await stack.start_engine(**SLOTS)
    # A second console server of this engine, which the test can stop and restart.
    keys = running.engine.store.keys
    settings = load_settings(stack.env(**SLOTS))
    controls = {keys.book: Controls(stack.redis, keys, settings)}

    async def serve(port: int) -> web.AppRunner:
        app = make_app(running.health, running.metrics, controls=controls, token=TOKEN)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = await serve(0)
    port = runner.addresses[0][1]
    try:
        page = await open_console(browser, f"http://127.0.0.1:{port}/")
        await runner.cleanup()
        await expect(page.locator("#conn")).to_have_text("disconnected — reconnecting…")
        runner = await serve(port)
        await expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
        await stack.send_plan("p-after", "BNBUSDT")  # and the pushes flow again
        await expect(page.locator('#decisions tr[data-plan="p-after"]')).to_have_count(1)
    finally:
        await runner.cleanup()


CHARTS = ("decisions", "latency", "slots", "rotations")


async def chart_number(page: Page, name: str, attribute: str) -> float:
    return float(await page.locator(f"#chart-{name}").get_attribute(f"data-{attribute}") or 0)


STROKE_PIXELS_JS = """([name, rgb]) => {
    const canvas = document.querySelector(`#chart-${name} canvas`);
    const { width, height } = canvas;
    if (!width || !height) return 0;
    const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    let n = 0;
    for (let i = 0; i < pixels.length; i += 4) {
        const close = [0, 1, 2].every((c) => Math.abs(pixels[i + c] - rgb[c]) < 40);
        if (close && pixels[i + 3] > 200) n += 1;
    }
    return n;
}"""


async def stroke_pixels(page: Page, name: str, rgb: tuple[int, int, int]) -> int:
    """Pixels of the chart's canvas drawn in (about) the colour `rgb`."""
    count: int = await page.evaluate(STROKE_PIXELS_JS, [name, list(rgb)])
    return count


async def until_drawn(page: Page, name: str, rgb: tuple[int, int, int], more_than: int) -> None:
    """Wait until the chart's canvas holds more than `more_than` pixels of `rgb`: the
    charts redraw once a second and when their box is resized, so a single look can
    fall between a resize and the next draw."""
    await page.wait_for_function(
        f"(args) => ({STROKE_PIXELS_JS})(args) > {more_than}",
        arg=[name, list(rgb)],
        timeout=10_000,
    )


async def test_the_charts_draw_the_live_pushes_and_slide(stack: Stack, browser: Browser) -> None:
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    running = await stack.start_engine(**{**SLOTS, "GOV_ROTATION_LOCK_TTL": "1.5"})
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    for name in CHARTS:
        await expect(page.locator(f"#chart-{name} canvas")).to_have_count(1)
        assert await chart_number(page, name, "total") == 0

    await stack.send_plan("a1b2c3d4e5f67890")  # a rotation, confirmed
    lock = await stack.event(R.EV_LOCK_CREATED)
    await stack.send_result(lock["close_plan_id"], symbol=lock["close_symbol"])
    await stack.event(R.EV_COMPLETE)
    await stack.send_plan("b1b2c3d4e5f67890", "XRPUSDT")  # a rotation that times out
    await stack.event(R.EV_TIMEOUT)

    # started + confirmed + started + timed out, counted from the pushes alone
    await page.wait_for_function(
        "() => Number(document.querySelector('#chart-rotations').dataset.total) >= 4"
    )
    for name in ("decisions", "latency", "slots"):
        assert await chart_number(page, name, "total") > 0, name
    await expect(page.locator("#charts-regime")).to_have_text("regime now: UNKNOWN")
    end = await chart_number(page, "decisions", "end")
    # The window slides with the clock: its end moves to the next 5 s bucket, and the
    # slots drawn since the run hold their value up to it.
    await page.wait_for_function(
        f"() => Number(document.querySelector('#chart-decisions').dataset.end) > {end}",
        timeout=10_000,
    )
    await screenshot(page, "console-charts")  # docs/console.png is a copy of this one
    # BLOCK is drawn over ALLOW: with as many of each in a bucket (this run's three
    # and three) the two lines are one, in BLOCK's colour.
    await until_drawn(page, "decisions", (0xB9, 0x1C, 0x1C), 20)  # decisions drawn
    await until_drawn(page, "rotations", (0xB9, 0x1C, 0x1C), 20)  # timed out drawn
    await until_drawn(page, "slots", (0x0F, 0x17, 0x2A), 0)  # desired drawn


async def test_a_page_opened_later_charts_the_history_it_missed(
    stack: Stack, browser: Browser
) -> None:
    running = await stack.start_engine(**SLOTS)
    for i in range(5):
        await stack.send_plan(f"p-history-{i}", "BNBUSDT")
    for i in range(5):
        await stack.decision(f"p-history-{i}")
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    await page.wait_for_function(
        "() => Number(document.querySelector('#chart-decisions').dataset.total) > 0"
    )
    # 5 decisions in 5 s buckets: the chart holds their rate, 1/s for the five
    assert await chart_number(page, "decisions", "total") == pytest.approx(5 / 5)
