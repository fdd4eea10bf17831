"""The engine's HTTP face: /healthz, /readyz, /metrics, /rotations (loopback by default)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .machine import IN_FLIGHT
from .metrics import Metrics
from .store import Store


@dataclass
class Health:
    """What /readyz reports: Redis reachable and the consumer groups in place."""

    redis_ok: bool = False
    groups_ok: bool = False
    last_error: str = ""
    stores: dict[str, Store] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.redis_ok and self.groups_ok


HEALTH = web.AppKey("health", Health)
METRICS = web.AppKey("metrics", Metrics)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    body = {
        "ready": health.ready,
        "redis": health.redis_ok,
        "groups": health.groups_ok,
        "error": health.last_error,
    }
    return web.json_response(body, status=200 if health.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    health, m = request.app[HEALTH], request.app[METRICS]
    for book, store in health.stores.items():
        with contextlib.suppress(Exception):  # a scrape during an outage still answers
            m.in_flight.labels(book or "-").set(await store.redis.scard(store.keys.inflight))
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def rotations(request: web.Request) -> web.Response:
    """Rotations in flight and the most recent finished ones, per book, as JSON."""
    health = request.app[HEALTH]
    limit = min(int(request.query.get("limit", "50")), 500)
    out: dict[str, Any] = {}
    for book, store in health.stores.items():
        out[book or "-"] = await _book_rotations(store, limit)
    return web.Response(body=msgspec.json.encode(out), content_type="application/json")


async def _book_rotations(store: Store, limit: int) -> dict[str, Any]:
    k = store.keys
    inflight = sorted(m.decode() for m in await store.redis.smembers(k.inflight))
    recent = [m.decode() for m in await store.redis.zrevrange(k.finished, 0, limit - 1)]
    records = []
    for rotation_id in [*inflight, *recent]:
        rec = await store.rotation(rotation_id)
        if rec is not None:
            records.append(msgspec.structs.asdict(rec))
    return {
        "in_flight": [r for r in records if r["state"] in IN_FLIGHT],
        "finished": [r for r in records if r["state"] not in IN_FLIGHT],
    }


def make_app(health: Health, metrics_: Metrics) -> web.Application:
    """The aiohttp application (no console yet)."""
    app = web.Application()
    app[HEALTH] = health
    app[METRICS] = metrics_
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/rotations", rotations)
    return app
