"""A setting that cannot work stops `rotation-fsm run` with one line naming it, exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.timeout(60)


def run_engine(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rotation_fsm.tools.cli", "run"],
        env={**os.environ, "METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_refused(done: subprocess.CompletedProcess[str], setting: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith(f"rotation-fsm: bad setting: {setting}="), done.stderr
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_redis_url_that_is_not_one_is_refused():
    assert_refused(run_engine(REDIS_URL="garbage"), "REDIS_URL")


def test_a_database_index_redis_refuses_is_refused(redis_url: str):
    assert_refused(run_engine(REDIS_URL=redis_url.rsplit("/", 1)[0] + "/99"), "REDIS_URL")


def test_a_wrong_redis_password_is_refused_without_showing_it(redis_url: str):
    host = redis_url.split("://", 1)[1]
    done = run_engine(REDIS_URL=f"redis://nobody:wrong-pass-77@{host}")
    assert_refused(done, "REDIS_URL")
    assert "wrong-pass-77" not in done.stderr


def test_an_http_host_that_is_no_address_is_refused():
    assert_refused(run_engine(GOV_HTTP_HOST="999.999.1.1"), "GOV_HTTP_HOST")


def test_an_http_host_that_is_not_this_machine_is_refused(redis_url: str):
    done = run_engine(REDIS_URL=redis_url, GOV_HTTP_HOST="192.0.2.1")  # TEST-NET-1
    assert_refused(done, "GOV_HTTP_HOST")


def test_a_metrics_port_in_use_is_refused_with_nothing_left_open(redis_url: str, taken_port: int):
    done = run_engine(REDIS_URL=redis_url, METRICS_PORT=str(taken_port))
    assert_refused(done, "METRICS_PORT")
