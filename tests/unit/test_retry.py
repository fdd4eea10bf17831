"""The one backoff schedule every retry loop waits by."""

import asyncio

from rotation_fsm.store.retry import Backoff, wait_or_stop


def test_each_wait_lies_between_half_and_all_of_its_doubling_step():
    backoff = Backoff(first_s=0.2, cap_s=5.0)
    steps = [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    for step in steps:
        assert step / 2 <= backoff.next_s() <= step


def test_a_success_starts_the_schedule_again():
    backoff = Backoff(first_s=0.2, cap_s=5.0)
    for _ in range(6):
        backoff.next_s()
    backoff.reset()
    assert backoff.next_s() <= 0.2


def test_a_day_of_failures_still_waits_the_cap():
    backoff = Backoff(first_s=0.2, cap_s=5.0)
    backoff.failures = 20_000  # 2**20000 is no float; the schedule stops doubling
    assert 2.5 <= backoff.next_s() <= 5.0


async def test_a_stop_cuts_the_wait_short():
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(wait_or_stop(stop, 60.0), timeout=1.0) is True
