"""Shared fixtures: real redis-servers started on free loopback ports.

One server per test module (``redis_server``), flushed before each test (``redis_url``),
so tests are isolated without paying a server start each. Tests that kill or restart a
server get their own from ``redis_factory``. Nothing async lives at session scope: event
loops stay per test.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis
import redis.asyncio

from rotation_fsm.devkit.redis_process import RedisProcess, all_redis_servers

RedisFactory = Callable[..., RedisProcess]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    """A redis-server (``find_redis_server()``'s binary) shared by one test module."""
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The module's server, emptied (FLUSHALL) before this test."""
    if not redis_server.running:  # a test killed it: later tests still get a server
        redis_server.restart()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client (bytes replies) on the flushed module server."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_factory() -> Iterator[RedisFactory]:
    """``make(appendonly=False, binary=None)`` starts a server of the test's own; all are
    stopped at teardown. For tests that kill -9, restart or need a given binary."""
    started: list[RedisProcess] = []

    def make(appendonly: bool = False, binary: str | None = None) -> RedisProcess:
        server = RedisProcess(binary=binary, appendonly=appendonly)
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.close()


def _version_id(server: tuple[str, str]) -> str:
    # description is "redis-server 7.0.15 on PATH"
    return f"redis-{server[1].split()[1]}"


@pytest.fixture(params=all_redis_servers(), ids=_version_id)
def any_redis_binary(request: pytest.FixtureRequest) -> str:
    """Path of each distinct redis-server here (one per version): e.g. 7.0 and 6.2."""
    path: str = request.param[0]
    return path


# When a @given test fails, hypothesis' pytest plugin imports libcst (to print a patch)
# and libcst defines a class with mypy_extensions.TypedDict, which warns
# DeprecationWarning. Under `filterwarnings = ["error"]` that warning, raised inside the
# plugin's report hook, is an INTERNALERROR that ends the whole session instead of
# reporting the failing example. Importing libcst once here, with that warning ignored,
# leaves the plugin nothing to warn about.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    importlib.import_module("libcst")
