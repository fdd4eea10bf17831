"""Configuration: defaults per contract, a bad value names its variable."""

import re

import pytest

from rotation_fsm.core.settings import (
    RULE_SPECS,
    SettingError,
    load_settings,
    overlay,
    parse_bool,
    rules_from,
    validate_rule,
)


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


# Values that parse as numbers but that Redis or Python cannot carry: each must be
# refused where it enters, never reach a commit.
OUT_OF_RANGE = [
    ("GOV_RESERVATION_TTL", "1e17"),
    ("GOV_RESERVATION_TTL", "1e306"),
    ("GOV_RETENTION_S", "1e306"),
    ("GOV_RETENTION_S", "99999999999999999999999"),
    ("GOV_AUDIT_MAXLEN", "99999999999999999999999"),
    ("GOV_CLAIM_IDLE_MS", "99999999999999999999999"),
    ("GOV_ROTATION_LOCK_TTL", "1e306"),
    ("GOV_ROTATION_LOCK_TTL", "0.0000001"),
    ("GOV_ACTIVE_SLOTS_BASE", "99999999999999999999999"),
    ("GOV_MAX_CONCURRENT_ROTATIONS", "1" + "0" * 5000),
    ("REDIS_DB", "99999999999999999999"),
]


@pytest.mark.parametrize(("name", "value"), OUT_OF_RANGE)
def test_an_out_of_range_number_in_the_environment_is_refused(name, value):
    with pytest.raises(SettingError) as err:
        load_settings({name: value})
    assert err.value.name == name and re.search(r" (to|at most) \d", str(err.value))


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, v in OUT_OF_RANGE if n in RULE_SPECS])
def test_an_out_of_range_live_value_is_refused_by_set_and_http(name, value):
    # `rotation-fsm set` and `PUT /api/settings/…` both store through validate_rule.
    with pytest.raises(SettingError, match=name):
        validate_rule(name, value)


def test_an_out_of_range_value_in_the_settings_hash_keeps_the_last_good_one():
    last = rules_from({"GOV_ROTATION_LOCK_TTL": "30"})
    rules, errors = overlay(rules_from({}), {"GOV_ROTATION_LOCK_TTL": "1e306"}, last)
    assert rules.lock_ttl_s == 30.0
    assert [e.name for e in errors] == ["GOV_ROTATION_LOCK_TTL"]


def test_every_numeric_rule_says_its_range_when_refused():
    for name, spec in RULE_SPECS.items():
        if spec.parse is parse_bool:
            continue
        with pytest.raises(SettingError, match=r" (to|at most) \d"):
            validate_rule(name, "1e300")


def test_the_largest_value_in_range_is_accepted():
    s = load_settings({"GOV_RESERVATION_TTL": "604800", "GOV_AUDIT_MAXLEN": "1000000000"})
    assert s.rules.reservation_ttl_s == 604800 and s.audit_maxlen == 1_000_000_000
