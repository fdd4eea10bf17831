"""The engine's HTTP face: /healthz, /readyz, /metrics, /rotations, the operator API and
the web console at / (loopback by default)."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.machine import IN_FLIGHT
from ..core.messages import as_text
from ..core.settings import Number, SettingError, count
from ..runtime.account_view import POLLING, STARTING, STREAM, AccountView
from ..runtime.book_gauges import read_book_gauges
from ..runtime.controls import DEADLINE_FROM_NOW, Controls, Refused
from ..runtime.metrics import Metrics
from ..store.gateway import Store
from .live import DEFAULT_MAX_CLIENTS
from .routes import add_console_routes, bad_request


@dataclass
class Health:
    """What /readyz reports: Redis reachable, the consumer groups in place, and each
    book's exchange view usable (its source, weight used and the cause of a failure)."""

    redis_ok: bool = False
    redis_out_of_memory: bool = False  # Redis answers but refuses writes (maxmemory)
    down: dict[str, str] = field(default_factory=dict)  # failing loop → its error
    groups_ok: bool = False
    last_error: str = ""
    stores: dict[str, Store] = field(default_factory=dict)
    views: dict[str, AccountView] = field(default_factory=dict)

    @property
    def exchange_ok(self) -> bool:
        """No book's view is stale or failing before its first snapshot."""
        return all(_view_ok(v) for v in self.views.values())

    @property
    def ready(self) -> bool:
        return self.redis_ok and self.groups_ok and self.exchange_ok


def _view_ok(view: AccountView) -> bool:
    source = view.source
    return source in (STREAM, POLLING) or (source == STARTING and not view.cause)


# Probes and scrapers reach the engine by a service name (compose, Kubernetes): these
# answer whatever the Host. Everything else reads the book, so it is served only to a
# Host naming this server: a page of another site whose name was rebound to our
# address (DNS rebinding) sends its own name and is refused.
ANY_HOST_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def host_allowed(host_header: str, names: frozenset[str]) -> bool:
    """The Host header names this server: one of `names` (lower case), or an IP
    address literal (an address cannot be rebound to another server)."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8044
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if host in names:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@web.middleware
async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (421) a request whose Host is not this server's, except on probe paths."""
    if request.path in ANY_HOST_PATHS or host_allowed(request.host, request.app[HOSTS]):
        return await handler(request)
    raise web.HTTPMisdirectedRequest(
        text=f"Host {request.host!r} is not served here: add the name to GOV_HTTP_ALLOWED_HOSTS"
    )


HEALTH = web.AppKey("health", Health)
METRICS = web.AppKey("metrics", Metrics)
CONTROLS = web.AppKey("controls", dict[str, Controls])
TOKEN = web.AppKey("token", str)
HOSTS = web.AppKey("hosts", frozenset[str])
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    body = {
        "ready": health.ready,
        "redis": health.redis_ok,
        "redis_out_of_memory": health.redis_out_of_memory,
        "groups": health.groups_ok,
        "exchange": health.exchange_ok,
        "error": health.last_error,
        "exchange_views": {book or "-": v.state() for book, v in health.views.items()},
    }
    return web.json_response(body, status=200 if health.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    health, m = request.app[HEALTH], request.app[METRICS]
    now_ms = int(time.time() * 1000)
    for book, store in health.stores.items():
        with contextlib.suppress(Exception):  # a scrape during an outage still answers
            await read_book_gauges(m, book or "-", store.redis, store.keys, store.group, now_ms)
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


ROTATIONS_LIMIT = count(500, low=1)
EXTEND_BODY = '{"seconds": <number>} (a JSON object)'


def query_number(request: web.Request, name: str, default: str, number: Number) -> Any:
    """Query parameter `name` checked against `number`'s range; 400 naming it if not."""
    text = request.query.get(name, default)
    try:
        return number.parse(text)
    except ValueError:
        raise bad_request(f"{name}={text!r}: expected {number.expected}") from None


async def rotations(request: web.Request) -> web.Response:
    """Rotations in flight and the most recent finished ones, per book, as JSON."""
    health = request.app[HEALTH]
    limit = query_number(request, "limit", "50", ROTATIONS_LIMIT)
    out: dict[str, Any] = {}
    for book, store in health.stores.items():
        out[book or "-"] = await _book_rotations(store, limit)
    return web.Response(body=msgspec.json.encode(out), content_type="application/json")


async def _book_rotations(store: Store, limit: int) -> dict[str, Any]:
    k = store.keys
    inflight = sorted(as_text(m) for m in await store.redis.smembers(k.inflight))
    recent = [as_text(m) for m in await store.redis.zrevrange(k.finished, 0, limit - 1)]
    records = []
    for rotation_id in [*inflight, *recent]:
        rec = await store.rotation(rotation_id)
        if rec is not None:
            records.append(msgspec.structs.asdict(rec))
    return {
        "in_flight": [r for r in records if r["state"] in IN_FLIGHT],
        "finished": [r for r in records if r["state"] not in IN_FLIGHT],
    }


# ---------------------------------------------------------------- controls


def _refuse(status: int, reason: str) -> web.Response:
    return web.json_response({"ok": False, "error": reason}, status=status)


def _check_token(request: web.Request) -> web.Response | None:
    """Mutating endpoints need `Authorization: Bearer <GOV_HTTP_TOKEN>`; unset → refused."""
    token = request.app[TOKEN]
    if not token:
        return _refuse(403, "mutating endpoints are disabled: GOV_HTTP_TOKEN is not set")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return _refuse(401, "missing or wrong bearer token")
    return None


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (none sent: empty); 400 when it is not one."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("the body is not JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _extend_seconds(body: dict[str, Any]) -> float:
    """The `seconds` of an extend request, or 400 saying what is expected."""
    value = body.get("seconds")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"expected {EXTEND_BODY}, got seconds={value!r}")
    if not DEADLINE_FROM_NOW.holds(value):
        raise bad_request(f"seconds={value!r}: expected {DEADLINE_FROM_NOW.expected}")
    return float(value)


def _controls(request: web.Request) -> Controls | None:
    book = request.query.get("book", "")
    return request.app[CONTROLS].get(book)


async def _control(request: web.Request, action: str) -> web.Response:
    denied = _check_token(request)
    if denied is not None:
        return denied
    controls = _controls(request)
    if controls is None:
        return _refuse(404, f"no book {request.query.get('book', '')!r} here")
    body = await _body(request)
    by = str(body.get("by") or request.headers.get("X-Operator") or "http")
    try:
        if action == "abort":
            rec = await controls.abort(request.match_info["rotation_id"], by)
            return web.json_response(
                {"ok": True, "rotation_id": rec.rotation_id, "state": rec.state}
            )
        if action == "extend":
            seconds = _extend_seconds(body)
            rec = await controls.extend(request.match_info["rotation_id"], seconds, by)
            return web.json_response(
                {"ok": True, "rotation_id": rec.rotation_id, "deadline_ms": rec.deadline_ms}
            )
        if action in ("pause", "resume"):
            value = "true" if action == "pause" else "false"
            await controls.set("GOV_ENTRIES_PAUSED", value, by)
            return web.json_response({"ok": True, "GOV_ENTRIES_PAUSED": value})
        name = request.match_info["name"]
        old, new = await controls.set(name, str(body.get("value", "")), by)
        return web.json_response({"ok": True, "name": name, "old": old, "new": new})
    except (Refused, SettingError, ValueError) as exc:
        return _refuse(409, str(exc))


def _handler(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await _control(request, action)

    return handle


async def get_settings(request: web.Request) -> web.Response:
    controls = _controls(request)
    if controls is None:
        return _refuse(404, "no such book")
    return web.json_response(await controls.show())


def make_app(
    health: Health,
    metrics_: Metrics,
    *,
    controls: dict[str, Controls] | None = None,
    token: str = "",
    hosts: Iterable[str] = (),
    max_live_pages: int = DEFAULT_MAX_CLIENTS,
) -> web.Application:
    """The aiohttp application: health, metrics, status and the operator controls.

    `hosts`: the names this server answers to besides `localhost` and IP addresses
    (its bind name and GOV_HTTP_ALLOWED_HOSTS)."""
    app = web.Application()
    app[HOSTS] = frozenset(h.strip().lower() for h in ("localhost", *hosts) if h.strip())
    app[HEALTH] = health
    app[METRICS] = metrics_
    app[CONTROLS] = controls or {}
    app[TOKEN] = token
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/rotations", rotations)
    app.router.add_get("/api/settings", get_settings)
    app.router.add_put("/api/settings/{name}", _handler("set"))
    app.router.add_post("/api/pause", _handler("pause"))
    app.router.add_post("/api/resume", _handler("resume"))
    app.router.add_post("/api/rotations/{rotation_id}/abort", _handler("abort"))
    app.router.add_post("/api/rotations/{rotation_id}/extend", _handler("extend"))
    add_console_routes(
        app,
        health.stores,
        controls=bool(token),
        max_live_pages=max_live_pages,
        exchange={book: view.state for book, view in health.views.items()},
    )
    app.middlewares.append(check_host)  # inside the security headers: refusals carry them
    return app
