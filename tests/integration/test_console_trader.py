"""The console read at a glance by a trader (issue 17 item 7), in a real Chromium:
per-symbol regimes with a legend, the time zone said and switchable, final states
coloured by meaning, resends marked, the plan page laid out like the rotation page,
history by time range with paging and filters, pause/resume, a waiting entry shown."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from playwright.async_api import Browser, expect

from rotation_fsm.core import reasons as R
from rotation_fsm.core.messages import RotationRecord, rotation_to_hash
from rotation_fsm.core.regime import Regime
from rotation_fsm.devkit.paper_exchange.book import synthetic_klines
from tests.integration.harness import Stack
from tests.integration.test_console_browser import SLOTS, TOKEN, open_console, screenshot

pytestmark = pytest.mark.timeout(300)
PLAN = "a1b2c3d4e5f67890"
GREEN = "rgb(21, 128, 61)"


async def console_with_rotation(stack: Stack, browser: Browser, **env: str):  # type: ignore[no-untyped-def]
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
    running = await stack.start_engine(**{**SLOTS, **env})
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    await stack.send_plan(PLAN)
    lock = await stack.event(R.EV_LOCK_CREATED)
    return running, page, lock


async def test_each_symbol_has_its_regime_row_and_the_cells_a_legend(
    stack: Stack, browser: Browser
):
    now_ms = int(time.time() * 1000)
    stack.exchange.set_klines("NEWUSDT", synthetic_klines(Regime.CHOP, now_ms=now_ms, seed=1))
    stack.exchange.set_klines(
        "BNBUSDT", synthetic_klines(Regime.TREND_STRONG, now_ms=now_ms, seed=2)
    )
    stack.fill_book("BTCUSDT")
    running = await stack.start_engine(**SLOTS)
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    for plan_id, symbol in (("p-chop", "NEWUSDT"), ("p-trend", "BNBUSDT")):
        await stack.send_plan(plan_id, symbol)
        await stack.decision(plan_id)
    chop = page.locator('#regimes tr[data-symbol="NEWUSDT"]')
    trend = page.locator('#regimes tr[data-symbol="BNBUSDT"]')
    await expect(chop).to_contain_text("CHOP")
    await expect(chop.locator(".desired")).to_have_text("3")
    await expect(trend).to_contain_text("TREND_STRONG")
    await expect(trend.locator(".desired")).to_have_text("6")
    await expect(page.locator("#regime")).not_to_contain_text("CHOP")  # no flipping headline
    legend = page.locator("#legend")
    for meaning in ("open position", "entry allowed", "being closed", "free slot", "beyond"):
        await expect(legend).to_contain_text(meaning)
    await screenshot(page, "console-regimes")


async def test_times_say_utc_and_switch_to_the_browsers_zone(stack: Stack, browser: Browser):
    stack.fill_book("BTCUSDT")
    running = await stack.start_engine(**SLOTS)
    page = await browser.new_page(timezone_id="Asia/Kolkata")  # UTC+05:30, no summer time
    await page.goto(f"http://127.0.0.1:{running.http_port}/")
    await expect(page.locator("#conn")).to_have_text("live")
    await stack.send_plan("p-time")
    await stack.decision("p-time")
    ((entry_id, _),) = await stack.redis.xrevrange(stack.keys.decisions, count=1)
    decided_ms = int(entry_id.decode().split("-")[0])
    row_time = page.locator('#decisions tr[data-plan="p-time"] td').first
    await expect(page.locator("#tz")).to_have_text("times: UTC")
    await expect(page.locator("#decisions th").first).to_have_text("time (UTC)")
    await expect(row_time).to_have_text(clock(decided_ms))
    await page.click("#tz")
    await expect(page.locator("#tz")).to_have_text("times: local, UTC+05:30")
    await expect(page.locator("#decisions th").first).to_have_text("time (local, UTC+05:30)")
    await expect(row_time).to_have_text(clock(decided_ms + 5 * 3600_000 + 30 * 60_000))


def clock(ms: int) -> str:
    """HH:MM:SS.mmm of `ms` read as UTC."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:12]


async def test_confirmed_is_green_not_red(stack: Stack, browser: Browser):
    _, page, lock = await console_with_rotation(stack, browser)
    await stack.send_result(lock["close_plan_id"], symbol="SOLUSDT")
    state = page.locator(f'#finished tr[data-rotation="{lock["rotation_id"]}"] .state')
    await expect(state).to_have_text("CONFIRMED")
    assert await state.evaluate("e => getComputedStyle(e).color") == GREEN


async def test_a_resend_is_marked_as_one(stack: Stack, browser: Browser):
    stack.fill_book("BTCUSDT")
    running = await stack.start_engine(**SLOTS)
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    await stack.send_plan("p-twice")
    await stack.decision("p-twice")
    await stack.send_plan("p-twice")  # the apply layer sends it again
    rows = page.locator('#decisions tr[data-plan="p-twice"]')
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0).locator(".tag.resend")).to_have_text("resend")  # the newer
    await expect(rows.nth(1).locator(".tag.resend")).to_have_count(0)


async def test_a_rotation_waiting_shows_its_pending_entry(stack: Stack, browser: Browser):
    _, page, lock = await console_with_rotation(stack, browser)
    waiting = page.locator(f'#inflight tr[data-rotation="{lock["rotation_id"]}"] .waiting')
    await expect(waiting).to_contain_text(f"{PLAN} OPEN_LONG NEWUSDT")
    await expect(waiting).to_contain_text("entry ")
    await expect(waiting.locator("a")).to_have_attribute("href", f"/plan/{PLAN}")


async def test_the_plan_page_has_facts_and_a_table_like_the_rotation_page(
    stack: Stack, browser: Browser
):
    running, page, lock = await console_with_rotation(stack, browser)
    await page.goto(f"http://127.0.0.1:{running.http_port}/plan/{PLAN}")
    await expect(page.locator("#detail-title")).to_have_text(f"plan {PLAN}")
    facts = page.locator("#facts")
    await expect(facts.locator('[data-fact="symbol"] dd')).to_have_text("NEWUSDT")
    await expect(facts.locator('[data-fact="rotation"] a')).to_have_text(lock["rotation_id"])
    step = page.locator("#steps tbody tr").first
    await expect(step).to_contain_text(R.WAITING_ROTATION_CLOSE)
    await expect(page.locator("#diagram svg")).to_have_count(1)
    await page.goto(f"http://127.0.0.1:{running.http_port}/rotation/{lock['rotation_id']}")
    await expect(page.locator('#facts [data-fact="state"] dd')).to_have_text("CLOSE_EMITTED")
    await expect(page.locator("#steps tbody tr").first).to_contain_text("IDLE → LOCKED")
    await screenshot(page, "console-rotation-page")


async def test_pause_and_resume_buttons_need_the_token(stack: Stack, browser: Browser):
    stack.fill_book("BTCUSDT")
    running = await stack.start_engine(**SLOTS)
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    await expect(page.locator("#pause")).to_be_hidden()  # read-only without the token
    await page.fill("#token", TOKEN)
    await page.click("#token-set")
    await page.click("#pause")
    await expect(page.locator("#paused")).to_be_visible()
    assert await stack.redis.hget(stack.keys.settings, "GOV_ENTRIES_PAUSED") == b"true"
    await page.click("#resume")
    await expect(page.locator("#paused")).to_be_hidden()
    assert await stack.redis.hget(stack.keys.settings, "GOV_ENTRIES_PAUSED") == b"false"


FINISHED = 60
BASE_MS = 1_700_000_000_000  # fixed past moments: the page's range inputs name them


async def seed_finished(stack: Stack) -> None:
    """60 finished rotations a minute apart, alternately CONFIRMED and TIMED_OUT."""
    async with stack.redis.pipeline(transaction=False) as pipe:
        for i in range(FINISHED):
            ended = BASE_MS + i * 60_000
            rec = RotationRecord(
                rotation_id=f"r{i:03d}@{ended}", state="CONFIRMED" if i % 2 else "TIMED_OUT",
                version=1, new_plan_id=f"r{i:03d}", new_symbol="NEWUSDT", new_action="OPEN_LONG",
                new_confidence=None, close_symbol="SOLUSDT", close_plan_id=f"c{i:03d}",
                close_weakness=0.1, created_ms=ended - 1000, deadline_ms=ended + 1000,
                updated_ms=ended, regime="CHOP", desired_slots=3, ended_ms=ended,
            )  # fmt: skip
            pipe.hset(stack.keys.rotation(rec.rotation_id), mapping=rotation_to_hash(rec))
            pipe.zadd(stack.keys.finished, {rec.rotation_id: ended})
        await pipe.execute()


async def test_finished_rotations_page_filter_by_state_and_take_a_time_range(
    stack: Stack, browser: Browser
):
    await seed_finished(stack)
    running = await stack.start_engine(**SLOTS)
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    rows = page.locator("#finished tbody tr")
    await expect(rows).to_have_count(50)
    await expect(page.locator("#r-page")).to_have_text("1–50 of 60 ended in the range")
    await expect(rows.first).to_have_attribute("data-rotation", f"r059@{BASE_MS + 59 * 60_000}")
    await page.click("#r-older")
    await expect(rows).to_have_count(10)
    await expect(page.locator("#r-page")).to_have_text("51–60 of 60 ended in the range")
    await page.click("#r-newest")
    await page.select_option("#r-state", "TIMED_OUT")
    await expect(rows).to_have_count(30)
    await expect(page.locator("#finished .state").filter(has_text="CONFIRMED")).to_have_count(0)
    start = datetime.fromtimestamp((BASE_MS + 10 * 60_000) / 1000, tz=UTC)
    end = datetime.fromtimestamp((BASE_MS + 19 * 60_000) / 1000, tz=UTC)
    await page.fill("#r-from", start.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.fill("#r-to", end.strftime("%Y-%m-%dT%H:%M:%S"))
    await page.locator("#r-to").dispatch_event("change")
    await expect(rows).to_have_count(5)  # r010 … r018, the even ones
    await expect(page.locator("#r-page")).to_have_text("1–5 of 10 ended in the range")


async def test_decisions_page_back_and_filter_by_reason(stack: Stack, browser: Browser):
    async with stack.redis.pipeline(transaction=False) as pipe:
        for i in range(120):
            reason = R.PAUSED if i % 3 == 0 else R.SLOTS_AVAILABLE
            decision = "BLOCK" if i % 3 == 0 else "ALLOW"
            fields = {"plan_id": f"d{i:03d}", "symbol": "NEWUSDT", "decision": decision,
                      "reason": reason}  # fmt: skip
            pipe.xadd(stack.keys.decisions, fields, id=f"{BASE_MS + i}-0")
        await pipe.execute()
    running = await stack.start_engine(**SLOTS)
    page = await open_console(browser, f"http://127.0.0.1:{running.http_port}/")
    rows = page.locator("#decisions tbody tr")
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_have_attribute("data-plan", "d119")
    await page.click("#d-older")
    await expect(rows.first).to_have_attribute("data-plan", "d069")
    await page.click("#d-older")
    await expect(rows).to_have_count(20)
    await expect(page.locator("#d-older")).to_be_disabled()
    await page.click("#d-newest")
    await page.select_option("#f-reason", R.PAUSED)
    await expect(rows).to_have_count(40)
    await expect(rows.first).to_have_attribute("data-plan", "d117")
