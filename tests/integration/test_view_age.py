"""The age of the exchange view and the slot cap, on a real Redis with two replicas.

The exchange answers `positionRisk` half a second after taking its snapshot, and the
apply layer fills an ALLOW within 50 ms: a plan decided on a snapshot from before a
fill must still count that fill's slot, though the fill's result already came.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from rotation_fsm.core import reasons as R
from tests.integration.harness import Stack

pytestmark = pytest.mark.timeout(60)

#: every regime the same size, so the paper book's klines do not matter
FOUR_SLOTS = {
    "GOV_ACTIVE_SLOTS_BASE": "4",
    "GOV_ACTIVE_SLOTS_TREND_STRONG": "4",
    "GOV_ACTIVE_SLOTS_CHOP": "4",
}
OPENING = {R.SLOTS_AVAILABLE, R.SLOT_ALREADY_HELD, R.ROTATION_COMPLETE}


async def fast_apply_layer(stack: Stack, plans: dict[str, str]) -> None:
    """Fills each ALLOW of `plans` (plan id → symbol) 50 ms after it, then reports it."""

    async def fill(plan_id: str, symbol: str) -> None:
        d = await stack.decision(plan_id, timeout_s=30)
        if d["decision"] == R.ALLOW and d["reason"] in OPENING:
            await asyncio.sleep(0.05)  # the apply layer's own latency, simulated
            stack.exchange.open(symbol, 1.0, 100.0)
            await stack.send_result(plan_id, executed=True, reduce_only=False, symbol=symbol)

    await asyncio.gather(*(fill(p, s) for p, s in plans.items()))


async def test_a_snapshot_older_than_a_fill_never_gives_its_slot_away(stack: Stack):
    stack.fill_book("BTCUSDT", "ETHUSDT", "SOLUSDT")  # 3 of 4 slots
    stack.exchange.snapshot_delay_s = 0.5
    await stack.start_engine(GOV_CONSUMER_NAME="replica-1", **FOUR_SLOTS)
    await stack.start_engine(GOV_CONSUMER_NAME="replica-2", **FOUR_SLOTS)
    plans = {"race-x-0000000001": "BNBUSDT", "race-y-0000000002": "XRPUSDT"}
    applying = asyncio.create_task(fast_apply_layer(stack, plans))
    try:
        await stack.send_plan("race-x-0000000001", "BNBUSDT")
        await asyncio.sleep(0.45)  # Y arrives while X's snapshot is still on its way
        await stack.send_plan("race-y-0000000002", "XRPUSDT")
        await asyncio.wait_for(applying, 30)
    finally:
        applying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await applying
    x = (await stack.decisions_for("race-x-0000000001"))[0]
    y = (await stack.decisions_for("race-y-0000000002"))[0]
    assert (x["decision"], x["reason"]) == (R.ALLOW, R.SLOTS_AVAILABLE)
    assert y["reason"] != R.SLOTS_AVAILABLE, y
    assert len(stack.exchange.positions) <= 4, sorted(stack.exchange.positions)
