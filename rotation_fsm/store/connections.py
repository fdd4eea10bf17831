"""Connections to Redis, and which of its errors are an outage to wait out.

Every client of the engine, the CLI and the console comes from `connect`, with the
same retries and timeouts; `is_redis_down` and `is_redis_out_of_memory` tell the
loops which errors to wait out instead of crashing.
"""

from __future__ import annotations

import os
import traceback

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterError,
    OutOfMemoryError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.settings import Settings
from .gateway import AnyRedis

# Redis Cluster: while a master fails over to its replica, the cluster client
# raises these once its own retries are spent — CLUSTERDOWN / TTL exhausted (ClusterError),
# TRYAGAIN, a slot missing from its map — as well as connection errors. All pass once the
# replica is promoted, so they are waited out like an outage, not a crash.
REDIS_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
)

_REDIS_CONNECTION_MODULE = os.path.join("redis", "asyncio", "connection.py")


def is_redis_down(exc: BaseException) -> bool:
    """True for an outage to wait out: `REDIS_DOWN`, or redis-py's connection race.

    redis-py ≤ 8.1 (redis/redis-py#3546, #4287): a connection that another task closed
    under us — the cluster client closes all of its connections on CLUSTERDOWN — fails
    the next write with AttributeError/TypeError instead of ConnectionError. Only an
    error raised through redis-py's asyncio connection module is taken for that race.
    """
    if isinstance(exc, REDIS_DOWN):
        return True
    if not isinstance(exc, AttributeError | TypeError):
        return False
    frames = traceback.walk_tb(exc.__traceback__)
    return any(f.f_code.co_filename.endswith(_REDIS_CONNECTION_MODULE) for f, _ in frames)


def is_redis_out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write for `maxmemory`: an outage to wait out like any other.

    Nothing was half written: the commit script's first write fails when Redis was
    out of memory as it began, and an entry is acknowledged only inside the commit,
    so the batch stays pending and is decided again once memory is freed."""
    return isinstance(exc, OutOfMemoryError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("OOM ")
    )


def connect(settings: Settings, *, blocking: bool = False) -> AnyRedis:
    """A client for `settings.redis_url`; `blocking` for the XREADGROUP connection,
    whose socket must outlive the BLOCK time (redis-py 8 defaults to 5 s)."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3)
    timeout = None if blocking else 5.0
    # A password in the URL wins; REDIS_PASSWORD[_FILE] serves a URL without one.
    password = settings.redis_password or None
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_url, socket_timeout=timeout, retry=retry, password=password
        )
    return Redis.from_url(
        settings.redis_url,
        password=password,
        socket_timeout=timeout,
        retry=retry,
        socket_connect_timeout=2.0,
        health_check_interval=15,
    )
