"""A Redis outage: not ready meanwhile, nothing decided, memory flat; then it resumes."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from rotation_fsm.core import reasons as R
from tests.integration.harness import EngineProcess, open_stack

pytestmark = pytest.mark.timeout(90)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])


async def readiness(port: int) -> int:
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


async def wait_readiness(port: int, status: int, timeout_s: float = 15.0) -> float:
    """Probe /readyz until it answers `status`; returns how long that took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await readiness(port) == status:
            return time.monotonic() - start
        await asyncio.sleep(0.05)  # a readiness probe, as a load balancer would do it
    raise TimeoutError(f"/readyz never answered {status}")


async def test_outage_then_resume_without_restart_or_loss(redis_factory):
    server = redis_factory(appendonly=True)
    async with open_stack(server.url) as stack:
        proc = EngineProcess(stack.env(METRICS_PORT="0"))
        try:
            await proc.start()
            port = int(re.search(r"http=127\.0\.0\.1:(\d+)", proc.log_lines[-1]).group(1))
            await stack.until_groups()
            await stack.send_plan("before-outage")
            assert (await stack.decision("before-outage"))["reason"] == R.SLOTS_AVAILABLE
            assert await readiness(port) == 200
            rss_before = rss_kb(proc.proc.pid)

            server.kill()
            await wait_readiness(port, 503)
            outage_start = time.monotonic()
            while time.monotonic() - outage_start < 5.0:  # the outage lasts 5 s
                await asyncio.sleep(0.5)
                assert await readiness(port) == 503
            rss_during = rss_kb(proc.proc.pid)
            server.restart()

            await wait_readiness(port, 200, timeout_s=20)
            await stack.send_plan("after-outage", "BNBUSDT")
            assert (await stack.decision("after-outage", timeout_s=20))["reason"] == (
                R.SLOTS_AVAILABLE
            )
            assert proc.proc.poll() is None  # the same process: no restart
            assert rss_during - rss_before < 20_000, (rss_before, rss_during)
            pending = await stack.redis.xpending(stack.keys.plans, "rotation-fsm")
            assert pending["pending"] == 0
        finally:
            proc.close()
