"""The core flows on every redis-server available (Debian's 7.0 and the wheel's 6.2)."""

from __future__ import annotations

import pytest

from rotation_fsm.core import reasons as R
from tests.integration.harness import open_stack

pytestmark = pytest.mark.timeout(60)


async def test_rotation_confirm_timeout_and_dead_letter(any_redis_binary, redis_factory):
    server = redis_factory(binary=any_redis_binary)
    async with open_stack(server.url) as stack:
        stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")
        await stack.start_engine(
            GOV_ACTIVE_SLOTS_CHOP="3",
            GOV_ROTATION_LOCK_TTL="1",
            GOV_MAX_CONCURRENT_ROTATIONS="2",
            GOV_CLAIM_IDLE_MS="300",
        )
        await stack.send_plan("compat-1")
        first = await stack.event(R.EV_LOCK_CREATED)
        stack.exchange.close(first["close_symbol"])  # what the apply layer did
        await stack.send_result(first["close_plan_id"], symbol=first["close_symbol"])
        assert (await stack.event(R.EV_COMPLETE))["rotation_id"] == first["rotation_id"]
        await stack.send_plan("compat-2", "BNBUSDT")
        second = await stack.event(R.EV_LOCK_CREATED)
        assert second["close_symbol"] != first["close_symbol"]
        assert (await stack.event(R.EV_TIMEOUT))["rotation_id"] == second["rotation_id"]
        await stack.send_raw(stack.keys.plans, {b"plan_id": b"x", b"symbol": b"\xff"})
        # an entry a dead consumer read and never acknowledged is claimed (XAUTOCLAIM)
        await stack.send_plan("compat-orphan", "AVAXUSDT")
        await stack.redis.xreadgroup("rotation-fsm", "dead", {stack.keys.plans: ">"})
        await stack.decision("compat-orphan")
        letters = await stack.redis.xrange(stack.keys.dlq)
        assert len(letters) == 1 and b"UTF-8" in letters[0][1][b"error"]
        pending = await stack.redis.xpending_range(
            stack.keys.plans, "rotation-fsm", "-", "+", 100, consumername="dead"
        )
        assert pending == []  # everything the dead consumer held was claimed and decided
