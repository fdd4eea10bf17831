"""The HTTP API refuses bad input with a 400 that says why, and any Host but its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from rotation_fsm.core.settings import load_settings
from rotation_fsm.runtime.controls import Controls
from rotation_fsm.runtime.metrics import Metrics
from rotation_fsm.store.gateway import Store
from rotation_fsm.store.keys import Keys
from rotation_fsm.web.http import Health, make_app

pytestmark = pytest.mark.timeout(30)
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def serve(redis_client: Redis, max_live_pages: int = 100) -> AsyncIterator[str]:
    """An engine's HTTP app on a loopback port, on an empty book; its base URL."""
    settings = load_settings({})
    keys = Keys()
    store = Store(redis_client, keys, group="g", retention_s=60)
    app = make_app(
        Health(redis_ok=True, groups_ok=True, stores={"": store}),
        Metrics(),
        controls={"": Controls(redis_client, keys, settings)},
        token=TOKEN,
        hosts=("console.example",),
        max_live_pages=max_live_pages,
    )
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
async def base(redis_client: Redis) -> AsyncIterator[str]:
    async with serve(redis_client) as url:
        yield url


@pytest.mark.parametrize("limit", ["abc", "0", "-5", "501", "1e3", ""])
async def test_rotations_refuses_a_limit_out_of_range(base: str, limit: str):
    async with aiohttp.ClientSession() as http, http.get(f"{base}/rotations?limit={limit}") as r:
        assert r.status == 400
        assert "limit=" in (await r.json())["error"]


async def test_rotations_serves_a_limit_in_range(base: str):
    async with aiohttp.ClientSession() as http, http.get(f"{base}/rotations?limit=500") as r:
        assert r.status == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"seconds": 1e308}',
        b"[1]",
        b'{"a": 1}',
        b'{"seconds": "soon"}',
        b"not json",
        b'{"seconds": true}',
        b'{"seconds": -1}',
        b'{"seconds": NaN}',
    ],
)
async def test_extend_refuses_a_body_that_is_not_seconds_in_range(base: str, body: bytes):
    url = f"{base}/api/rotations/rot-1/extend"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=AUTH) as r:
        assert r.status == 400
        assert (await r.json())["error"]


async def test_a_host_that_is_not_this_server_is_refused(base: str):
    evil = {"Host": "rebound.attacker.example"}
    async with aiohttp.ClientSession() as http:
        for path in ("/rotations", "/api/console/state", "/api/settings", "/"):
            async with http.get(base + path, headers=evil) as r:
                assert r.status == 421, path


async def test_this_servers_names_and_addresses_are_served(base: str):
    port = base.rsplit(":", 1)[1]
    async with aiohttp.ClientSession() as http:
        for host in (f"localhost:{port}", f"console.example:{port}", f"127.0.0.1:{port}"):
            async with http.get(f"{base}/api/settings", headers={"Host": host}) as r:
                assert r.status == 200, host


async def test_probes_answer_whatever_the_host(base: str):
    other = {"Host": "engine-1:8044"}
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(base + path, headers=other) as r:
                assert r.status == 200, path


async def test_live_pages_beyond_the_cap_are_answered_503(redis_client: Redis):
    async with (
        serve(redis_client, max_live_pages=1) as url,
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/console/events") as first,
    ):
        assert first.status == 200
        assert (await first.content.readuntil(b"\n\n")).startswith(b"retry:")
        async with http.get(f"{url}/api/console/events") as second:
            assert second.status == 503 and second.headers["Retry-After"]
            assert "GOV_SSE_MAX_CLIENTS" in (await second.json())["error"]


async def test_a_setting_redis_cannot_carry_is_refused_over_http(base: str, redis_client: Redis):
    url = f"{base}/api/settings/GOV_RESERVATION_TTL"
    async with (
        aiohttp.ClientSession() as http,
        http.put(url, json={"value": "1e17"}, headers=AUTH) as r,
    ):
        assert r.status == 409
        assert "GOV_RESERVATION_TTL='1e17'" in (await r.json())["error"]
    assert await redis_client.hgetall(Keys().settings) == {}
