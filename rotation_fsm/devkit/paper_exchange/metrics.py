"""The paper exchange's /metrics for Prometheus: the requests it served, by path.

Read from `PaperBook.requests` when scraped, so nothing on the request path changes.
A scrape is not itself counted and never takes an injected fault.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .book import PaperBook

PATH = "/metrics"


class RequestsCollector(Collector):
    """`paper_requests_total{path}` from the book's request counter."""

    def __init__(self, book: PaperBook) -> None:
        self.book = book

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "paper_requests", "Requests the paper exchange served, by path", labels=["path"]
        )
        for path, count in sorted(self.book.requests.items()):
            family.add_metric([path], count)
        yield family


def metrics_handler(book: PaperBook) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The GET /metrics handler for `book`."""
    registry = CollectorRegistry()
    registry.register(RequestsCollector(book))

    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return handle
