"""The web console's routes on the engine's HTTP server (loopback by default).

Pages: `/`, `/rotation/{id}` and `/plan/{id}` all serve one static page that routes
on its path; its script reads the JSON below and listens to `/api/console/events`.
The console only reads. Its abort button calls the token-guarded
`POST /api/rotations/{id}/abort` of `http.py` with the token the operator typed
(kept in the tab's sessionStorage); without it the console is read-only.

Every response of the app carries a strict Content-Security-Policy: only this
server's own script, stylesheet and connections; no inline script or style.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from ..store.gateway import AnyRedis, Store
from ..store.keys import Keys
from .live import DEFAULT_MAX_CLIENTS, Hub, HubFull, sse_messages
from .series import console_series
from .state import PAGE_ROWS, console_state, console_story, decision_page, rotation_page

STATIC = Path(str(resources.files("rotation_fsm.web").joinpath("static")))
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MAX_PAGE_ROWS = 500
HUB = web.AppKey("console_hub", Hub)
STORES = web.AppKey("console_stores", dict[str, Store])
CONTROLS_ON = web.AppKey("console_controls_on", bool)
#: per book, what its exchange view says of itself (source, weight used, error)
EXCHANGE = web.AppKey("console_exchange", dict[str, Callable[[], dict[str, Any]]])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # errors carry the headers too
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def _now_ms() -> int:
    return int(time.time() * 1000)


def _book(request: web.Request) -> tuple[AnyRedis, Keys]:
    stores = request.app[STORES]
    name = request.query.get("book", next(iter(stores), ""))
    store = stores.get(name)
    if store is None:
        raise web.HTTPNotFound(text=f"no book {name!r}")
    return store.redis, store.keys


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def books(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    return web.json_response({"books": list(stores), "controls": request.app[CONTROLS_ON]})


async def _json_or_503(make: Callable[[], Awaitable[Any]]) -> web.Response:
    try:
        body = await make()
    except RedisError as exc:
        return web.json_response({"error": f"redis unavailable: {exc}"}, status=503)
    if body is None:
        return web.json_response({"error": "unknown plan or rotation id"}, status=404)
    return web.json_response(body)


async def state(request: web.Request) -> web.Response:
    redis, keys = _book(request)
    exchange = request.app[EXCHANGE].get(keys.book)

    async def with_exchange() -> dict[str, Any]:
        body = await console_state(redis, keys, _now_ms())
        body["exchange"] = exchange() if exchange is not None else None
        return body

    return await _json_or_503(with_exchange)


async def series(request: web.Request) -> web.Response:
    redis, keys = _book(request)
    return await _json_or_503(lambda: console_series(redis, keys, _now_ms()))


def bad_request(message: str) -> web.HTTPBadRequest:
    """A 400 whose JSON body says what was wrong with the request."""
    return web.HTTPBadRequest(
        text=msgspec.json.encode({"ok": False, "error": message}).decode(),
        content_type="application/json",
    )


def _ms_param(request: web.Request, name: str) -> int | None:
    """An optional epoch-milliseconds query parameter; 400 when it is not one."""
    text = request.query.get(name, "")
    if not text:
        return None
    if not text.isdigit() or len(text) > 15:
        raise bad_request(f"{name}={text!r}: expected milliseconds since the epoch")
    return int(text)


def _count_param(request: web.Request, name: str, default: int, high: int) -> int:
    """An optional whole number in [0, high]; 400 otherwise."""
    text = request.query.get(name, "")
    if not text:
        return default
    if not text.isdigit() or int(text) > high:
        raise bad_request(f"{name}={text!r}: expected a whole number from 0 to {high}")
    return int(text)


async def decisions(request: web.Request) -> web.Response:
    """A page of decisions: `from`/`to` (ms), `reason`, `before` (entry id), `limit`."""
    redis, keys = _book(request)
    before = request.query.get("before", "")
    if before and not re.fullmatch(r"\d{1,15}-\d{1,15}", before):
        raise bad_request(f"before={before!r}: expected a stream entry id")
    kwargs: dict[str, Any] = {
        "from_ms": _ms_param(request, "from"),
        "to_ms": _ms_param(request, "to"),
        "reason": request.query.get("reason", ""),
        "before": before,
        "limit": _count_param(request, "limit", PAGE_ROWS, MAX_PAGE_ROWS) or PAGE_ROWS,
    }
    return await _json_or_503(lambda: decision_page(redis, keys, **kwargs))


async def finished(request: web.Request) -> web.Response:
    """A page of finished rotations: `from`/`to` (ms), `state`, `offset`, `limit`."""
    redis, keys = _book(request)
    kwargs: dict[str, Any] = {
        "from_ms": _ms_param(request, "from"),
        "to_ms": _ms_param(request, "to"),
        "state": request.query.get("state", ""),
        "offset": _count_param(request, "offset", 0, 10**12),
        "limit": _count_param(request, "limit", PAGE_ROWS, MAX_PAGE_ROWS) or PAGE_ROWS,
    }
    return await _json_or_503(lambda: rotation_page(redis, keys, **kwargs))


async def story(request: web.Request) -> web.Response:
    redis, keys = _book(request)
    some_id = request.match_info["some_id"]
    return await _json_or_503(lambda: console_story(redis, keys, some_id))


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    try:
        queue = hub.subscribe(asyncio.current_task())
    except HubFull as exc:  # the page retries with backoff
        return web.json_response({"error": str(exc)}, status=503, headers={"Retry-After": "10"})
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    response.headers.update(SECURITY_HEADERS)
    await response.prepare(request)
    async with contextlib.aclosing(sse_messages(queue, hub)) as chunks:
        async for chunk in chunks:
            try:
                await response.write(chunk)
            except ConnectionResetError:
                break
    return response


async def _close_hub(app: web.Application) -> None:
    await app[HUB].close()


def add_console_routes(
    app: web.Application,
    stores: dict[str, Store],
    *,
    controls: bool,
    max_live_pages: int = DEFAULT_MAX_CLIENTS,
    exchange: dict[str, Callable[[], dict[str, Any]]] | None = None,
) -> None:
    """Mount the console on `app`; `controls`: an HTTP token is configured (the abort
    button is offered; the token itself is never sent to the page); at most
    `max_live_pages` pages follow the live stream at once; `exchange`: per book, the
    state of its exchange view (shown in the header)."""
    app[STORES] = stores
    app[EXCHANGE] = exchange or {}
    app[HUB] = Hub(stores, max_clients=max_live_pages)
    app[CONTROLS_ON] = controls
    app.middlewares.append(security_headers)
    app.on_shutdown.append(_close_hub)
    app.router.add_get("/", page)
    app.router.add_get("/rotation/{some_id}", page)
    app.router.add_get("/plan/{some_id}", page)
    app.router.add_static("/console/static", STATIC, append_version=False)
    app.router.add_get("/api/console/books", books)
    app.router.add_get("/api/console/state", state)
    app.router.add_get("/api/console/series", series)
    app.router.add_get("/api/console/story/{some_id}", story)
    app.router.add_get("/api/console/decisions", decisions)
    app.router.add_get("/api/console/finished", finished)
    app.router.add_get("/api/console/events", events)
