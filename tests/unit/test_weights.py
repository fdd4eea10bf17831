"""The request-weight budget on a clock the test moves: Binance's weights, the share of
the limit, the exchange's own count, 429 and 418."""

from __future__ import annotations

import pytest

from rotation_fsm.runtime.weights import MINUTE_MS, RateLimited, WeightBudget, request_weight

START_MS = 1_770_000_000_000 // MINUTE_MS * MINUTE_MS + 1_000  # early in a minute


class Clock:
    def __init__(self) -> None:
        self.now_ms = START_MS

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.mark.parametrize(
    ("path", "params", "weight"),
    [
        ("/fapi/v2/positionRisk", {}, 5),
        ("/fapi/v2/account", {}, 5),
        ("/fapi/v1/listenKey", {}, 1),
        ("/fapi/v1/klines", {"limit": "99"}, 1),
        ("/fapi/v1/klines", {"limit": "101"}, 2),
        ("/fapi/v1/klines", {"limit": "1000"}, 5),
        ("/fapi/v1/klines", {"limit": "1500"}, 10),
        ("/fapi/v1/klines", {}, 5),  # Binance's default limit is 500
    ],
)
def test_each_call_weighs_what_binance_documents(path, params, weight):
    assert request_weight(path, params) == weight


def test_the_default_budget_is_half_the_ip_limit():
    assert WeightBudget().budget_per_min == 1200


def test_calls_past_the_share_of_the_limit_are_refused_until_the_next_minute(clock):
    budget = WeightBudget(100, 0.5, clock_ms=clock)
    for _ in range(10):
        budget.try_acquire(5)
    with pytest.raises(RateLimited, match="budget spent") as refused:
        budget.try_acquire(1)
    assert refused.value.until_ms == START_MS - 1_000 + MINUTE_MS
    clock.now_ms = refused.value.until_ms
    budget.try_acquire(5)
    assert budget.used_1m == 5
    assert budget.history[-1] == (START_MS - 1_000, 50)


def test_the_exchanges_count_wins_when_it_is_higher(clock):
    budget = WeightBudget(2400, 0.5, clock_ms=clock)
    budget.try_acquire(5)
    budget.observe(200, "1190", None)  # other processes on the IP used the rest
    assert budget.used_1m == 1190
    with pytest.raises(RateLimited):
        budget.try_acquire(11)


def test_a_429_holds_every_call_back_for_its_retry_after(clock):
    budget = WeightBudget(clock_ms=clock)
    budget.observe(429, None, 3.0)
    with pytest.raises(RateLimited, match="429"):
        budget.try_acquire(1)
    clock.now_ms += 2_999
    with pytest.raises(RateLimited):
        budget.try_acquire(1)
    clock.now_ms += 1
    budget.try_acquire(1)
    assert (budget.counts.throttled, budget.counts.refused) == (1, 2)


def test_a_418_refuses_every_call_until_the_ban_ends(clock):
    budget = WeightBudget(clock_ms=clock)
    budget.observe(418, None, 120.0)
    assert budget.banned
    with pytest.raises(RateLimited, match="banned"):
        budget.try_acquire(1)
    clock.now_ms += 120_000
    assert not budget.banned
    budget.try_acquire(1)


def test_a_later_429_does_not_shorten_a_ban(clock):
    budget = WeightBudget(clock_ms=clock)
    budget.observe(418, None, 120.0)
    budget.observe(429, None, 1.0)
    clock.now_ms += 60_000
    with pytest.raises(RateLimited, match="banned"):
        budget.try_acquire(1)


def test_a_418_without_retry_after_is_the_shortest_ban(clock):
    budget = WeightBudget(clock_ms=clock)
    budget.observe(418, None, None)
    assert budget.state()["blocked_for_ms"] == 120_000
