"""Configuration: defaults per contract, a bad value names its variable."""

import pytest

from rotation_fsm.settings import SettingError, load_settings, rules_from


def test_defaults_match_the_contract():
    s = load_settings({})
    r = s.rules
    assert (r.slots_base, r.slots_trend_strong, r.slots_chop) == (4, 6, 3)
    assert r.lock_ttl_s == 120 and r.reservation_ttl_s == 60
    assert r.max_correlation == 0.80 and r.max_margin_usage == 0.65
    assert r.max_concurrent_rotations == 1 and r.issue_permits and r.slots_enabled
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.streams.plans == "quantum:stream:apply.plan"
    assert s.consumer_group == "rotation-fsm" and s.metrics_port == 8044
    assert s.http_host == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GOV_ACTIVE_SLOTS_BASE", "abc"),
        ("GOV_ACTIVE_SLOTS_CHOP", "-1"),
        ("GOV_ROTATION_LOCK_TTL", "-5"),
        ("GOV_ROTATION_LOCK_TTL", "nan"),
        ("GOV_ACTIVE_SLOTS_ENABLED", "yes"),
        ("GOV_MAX_CONCURRENT_ROTATIONS", "0"),
        ("METRICS_PORT", "70000"),
        ("GOV_BOOK", "a{b}"),
    ],
)
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(SettingError) as err:
        load_settings({name: value})
    assert str(err.value).startswith(f"{name}={value!r}")


def test_float_ttl_is_accepted_for_tests():
    assert load_settings({"GOV_ROTATION_LOCK_TTL": "1.5"}).rules.lock_ttl_s == 1.5


def test_seed_redis_variables_are_honoured_without_redis_url():
    s = load_settings({"REDIS_HOST": "db", "REDIS_PORT": "6380", "REDIS_DB": "2"})
    assert s.redis_url == "redis://db:6380/2"


def test_seed_testnet_key_names_are_a_fallback_and_never_shown():
    s = load_settings({"BINANCE_TESTNET_API_KEY": "k-123", "BINANCE_TESTNET_API_SECRET": "s-456"})
    assert (s.api_key, s.api_secret) == ("k-123", "s-456")
    assert "k-123" not in repr(s) and "s-456" not in repr(s)


def test_rules_from_overrides_keep_the_rest():
    base = rules_from({"GOV_ACTIVE_SLOTS_BASE": "7"})
    changed = rules_from({"GOV_ACTIVE_SLOTS_CHOP": "2"}, base)
    assert (changed.slots_base, changed.slots_chop) == (7, 2)


def test_gates_of_one_or_more_are_off():
    r = rules_from({"GOV_MAX_CORRELATION": "1", "GOV_MAX_MARGIN_USAGE_PCT": "1.5"})
    assert not r.correlation_gate_on and not r.margin_gate_on
