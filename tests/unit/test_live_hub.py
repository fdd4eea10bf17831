"""The console's fan-out: bounded pages, one chunk per read, slow pages dropped."""

from __future__ import annotations

import asyncio

import pytest

from rotation_fsm.web.live import QUEUE, Hub, HubFull


def message(i: int) -> dict[str, object]:
    return {"kind": "decisions", "book": "", "id": f"{i}-0", "fields": {"plan_id": f"p{i}"}}


async def test_pages_beyond_the_cap_are_refused():
    hub = Hub({}, max_clients=2)
    first, _second = hub.subscribe(), hub.subscribe()
    with pytest.raises(HubFull, match="GOV_SSE_MAX_CLIENTS"):
        hub.subscribe()
    hub.unsubscribe(first)
    hub.subscribe()  # a place freed is taken again
    assert hub.refused == 1
    await hub.close()


async def test_one_read_of_many_entries_is_one_chunk_per_page():
    hub = Hub({}, max_clients=10)
    pages = [hub.subscribe() for _ in range(10)]
    await hub.publish([message(i) for i in range(300)])
    for page in pages:
        assert page.qsize() == 1  # one write per page, whatever the burst
        chunk = page.get_nowait()
        assert chunk is not None and chunk.count(b"event: change\n") == 300
    await hub.close()


async def test_a_page_that_falls_behind_is_dropped_and_the_others_are_served():
    hub = Hub({}, max_clients=10)
    stuck_writer = asyncio.create_task(asyncio.Event().wait())  # its socket is full
    slow, fast = hub.subscribe(stuck_writer), hub.subscribe()
    for i in range(QUEUE + 1):
        await hub.publish([message(i)])
        fast.get_nowait()
    assert hub.dropped == 1 and slow not in hub.subscribers
    assert slow.get_nowait() is None  # its stream ends: the page reconnects afresh
    with pytest.raises(asyncio.CancelledError):
        await stuck_writer  # and its connection is closed
    await hub.publish([message(999)])
    assert fast.get_nowait() is not None
    await hub.close()
