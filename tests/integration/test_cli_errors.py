"""A CLI misuse ends with one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotation_fsm.tools.cli", *args],
        env={**os.environ, "REDIS_URL": UNREACHABLE, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr


@pytest.mark.parametrize("seconds", ["1e308", "inf", "-1", "nan"])
def test_extend_by_seconds_out_of_range_is_refused(seconds):
    assert_one_line(cli("extend", "nope", seconds), "seconds=")


def test_set_against_a_redis_that_is_not_there_says_so():
    assert_one_line(
        cli("set", "GOV_ACTIVE_SLOTS_BASE", "3", "--redis-url", UNREACHABLE), "Redis unavailable"
    )


def test_status_with_a_url_that_is_not_one_names_it():
    assert_one_line(cli("status", "--redis-url", "garbage"), "REDIS_URL='garbage'")


def test_set_of_a_value_redis_cannot_carry_is_refused():
    assert_one_line(cli("set", "GOV_RESERVATION_TTL", "1e17"), "GOV_RESERVATION_TTL='1e17'")


def test_acl_refuses_a_book_the_engine_refuses():
    done = cli("acl", "--books", "a,{b}", "--password-env", "PW", PW="good-pass")
    assert_one_line(done, "GOV_BOOKS")
    assert done.stdout == ""


@pytest.mark.parametrize("password", ["a b", 'a"b', "a'b", "a\\b", "a\tb"])
def test_acl_refuses_a_password_redis_cli_would_split_or_unquote(password):
    done = cli("acl", "--password-env", "PW", PW=password)
    assert_one_line(done, "password")
    assert done.stdout == ""
